"""twistd integration: ``twistd -n e5s-proxy --config FILE``."""

from __future__ import annotations

import sys

from twisted.python import usage

from e5s_proxy.config import ConfigError, load_config


class Options(usage.Options):
    synopsis = "--config FILE [--debug]"
    optParameters = [["config", "c", None, "Path of the YAML config file."]]
    optFlags = [["debug", "d", "Verbose logs: each handshake, authorization decision and rotation."]]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")


def makeService(options: Options):
    from twisted.internet import reactor

    from e5s_proxy.logs import debug_from_environment, set_debug
    from e5s_proxy.service import ProxyService, exit_after_shutdown

    try:
        config = load_config(options["config"])
    except ConfigError as error:
        raise SystemExit(f"e5s-proxy: invalid configuration:\n{error}") from None

    set_debug(options["debug"] or debug_from_environment())
    if config.workers > 1:
        # TODO: run workers under twistd too; its single process has no supervisor.
        print(
            f"e5s-proxy: workers: {config.workers} is honoured by `e5s-proxy run` only; "
            "twistd runs one process",
            file=sys.stderr,
        )
    return ProxyService(config, reactor, on_fatal=exit_after_shutdown(reactor))
