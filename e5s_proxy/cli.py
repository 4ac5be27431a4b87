"""The ``e5s-proxy`` command: run, validate, identity and version."""

from __future__ import annotations

import argparse
import sys

from e5s_proxy import __version__
from e5s_proxy.config import ConfigError, load_config, parse_workload_socket, summarize

# How long `e5s-proxy identity --socket` waits when no config gives a timeout;
# the same as the default initial_fetch_timeout.
IDENTITY_FETCH_TIMEOUT = 30.0


def command_run(arguments: argparse.Namespace) -> int:
    try:
        config = load_config(arguments.config)
    except ConfigError as error:
        print(f"e5s-proxy: invalid configuration:\n{error}", file=sys.stderr)
        return 1

    from e5s_proxy.logs import debug_from_environment, start_logging

    start_logging(debug=arguments.debug or debug_from_environment(), log_format=arguments.log_format)
    if config.workers > 1 and arguments.worker is None:
        from e5s_proxy.workers import Supervisor

        passed_on = ["--log-format", arguments.log_format] + (["--debug"] if arguments.debug else [])
        return Supervisor(config, arguments.config, passed_on).run()

    from twisted.internet import reactor

    from e5s_proxy.service import ProxyService, stop_reactor_with

    proxy = ProxyService(config, reactor, worker_index=arguments.worker)
    proxy._on_fatal = stop_reactor_with(reactor, proxy)
    reactor.callWhenRunning(proxy.startService)
    reactor.addSystemEventTrigger("before", "shutdown", proxy.stopService)
    reactor.run()
    return proxy.exit_code


def command_validate(arguments: argparse.Namespace) -> int:
    try:
        config = load_config(arguments.file)
    except ConfigError as error:
        print(f"{arguments.file}: invalid configuration:\n{error}", file=sys.stderr)
        return 1
    print(summarize(config))
    return 0


def command_identity(arguments: argparse.Namespace) -> int:
    from e5s_proxy.identity import NoIdentityError, fetch_once

    timeout = IDENTITY_FETCH_TIMEOUT
    if arguments.socket:
        try:
            socket_path = parse_workload_socket(arguments.socket)
        except ValueError as error:
            print(f"e5s-proxy identity: --socket: {error}", file=sys.stderr)
            return 1
    else:
        try:
            config = load_config(arguments.config)
        except ConfigError as error:
            print(f"{arguments.config}: invalid configuration:\n{error}", file=sys.stderr)
            return 1
        socket_path = config.spire.workload_socket
        timeout = config.spire.initial_fetch_timeout

    try:
        svids, bundles = fetch_once(socket_path, timeout)
    except NoIdentityError as error:
        print(f"e5s-proxy identity: {error}", file=sys.stderr)
        return 1

    print(f"Workload API: {socket_path}")
    for index, svid in enumerate(svids):
        leaf = svid.leaf
        role = " (default)" if index == 0 else ""
        print(f"SVID {index}{role}: {svid.spiffe_id}")
        print(f"  expires: {leaf.not_valid_after_utc.isoformat()}")
        for depth, cert in enumerate(svid.cert_chain):
            print(f"  chain[{depth}]: subject={cert.subject.rfc4514_string()!r} serial={cert.serial_number:x}")
    names = sorted(bundle.trust_domain.name for bundle in bundles)
    print(f"Bundles: {', '.join(names) if names else '(none)'}")
    for bundle in sorted(bundles, key=lambda bundle: bundle.trust_domain.name):
        print(f"  {bundle.trust_domain.name}: {len(bundle.x509_authorities)} X.509 authorit(y/ies)")
    return 0


def command_version(arguments: argparse.Namespace) -> int:
    from importlib.metadata import PackageNotFoundError, version

    import OpenSSL
    import twisted

    try:
        spiffe_version = version("spiffe")
    except PackageNotFoundError:
        spiffe_version = "not installed"
    print(f"e5s-proxy {__version__}")
    print(f"Python {sys.version.split()[0]}")
    print(f"Twisted {twisted.__version__}")
    print(f"pyOpenSSL {OpenSSL.__version__}, {OpenSSL.SSL.OpenSSL_version(OpenSSL.SSL.OPENSSL_VERSION).decode()}")
    print(f"py-spiffe {spiffe_version}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="e5s-proxy", description="SPIFFE mTLS sidecar for HTTP/1.1 apps.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the proxy in the foreground until SIGTERM or SIGINT")
    run.add_argument("--config", required=True, metavar="FILE", help="path of the YAML config file")
    run.add_argument("--debug", action="store_true", help="verbose logs (also E5S_DEBUG=1)")
    run.add_argument("--log-format", choices=("text", "json"), default="text", help="log line format (default: text)")
    # Set by the supervisor of `workers: N` for each process it starts.
    run.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    run.set_defaults(handler=command_run)

    validate = commands.add_parser("validate", help="check a config file without connecting anywhere")
    validate.add_argument("file", metavar="FILE")
    validate.set_defaults(handler=command_validate)

    identity = commands.add_parser("identity", help="fetch and print the workload's SVIDs and bundles")
    source = identity.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="FILE", help="take the Workload API socket from this config")
    source.add_argument("--socket", metavar="ADDR", help="Workload API socket: unix:///path or /path")
    identity.set_defaults(handler=command_identity)

    version_command = commands.add_parser("version", help="print versions of e5s-proxy and its libraries")
    version_command.set_defaults(handler=command_version)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    return arguments.handler(arguments)


if __name__ == "__main__":
    sys.exit(main())
