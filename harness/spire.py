"""Run a real SPIRE 1.15.3 server and agents for integration tests and demos.

Contract:

- Every process and file lives under a workdir in /tmp made by
  ``make_workdir``. Servers bind 127.0.0.1 only, and the APIs are Unix sockets
  inside the workdir.
- ``start()`` returns only after the process passes its ``healthcheck``
  command, and raises ``SpireError`` with the log's tail otherwise.
- A failed ``spire-server`` or ``spire-agent`` command raises ``CommandError``
  with the command, the exit code and the stderr tail.
- ``SpireLab`` stops every process and removes every workdir on exit, unless
  the environment variable ``E5S_KEEP_SPIRE=1`` keeps the workdirs.

Standard library only, so that fixtures and demos can use it without Twisted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

SPIRE_VERSION = "1.15.3"
REPO_ROOT = Path(__file__).resolve().parent.parent
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-spire"

# Measured: the server and each agent pass their healthcheck within about 1 s
# on a 2-core machine. The margin is for loaded CI machines.
STARTUP_TIMEOUT_SECONDS = 60.0
# Grace period between SIGTERM and SIGKILL, long enough for SPIRE to close
# its sqlite datastore and sockets.
STOP_TIMEOUT_SECONDS = 10.0
# Upper bound for one CLI call. The CLI's own gRPC timeout is 5 s by default.
COMMAND_TIMEOUT_SECONDS = 30.0
# A cold build of SPIRE takes several minutes on 2 cores.
INSTALL_TIMEOUT_SECONDS = 30 * 60.0
# A new entry reaches the server's entry cache within its
# cache_reload_interval (5 s default), and then the agent within its sync
# interval (5 s default). Both knobs exist only under `experimental` in
# SPIRE 1.15.3 (server: experimental.cache_reload_interval, agent:
# experimental.sync_interval), so the harness keeps the defaults and waits.
SVID_TIMEOUT_SECONDS = 60.0
POLL_INTERVAL_SECONDS = 0.25
# Enough log lines to show the error that stopped a process.
LOG_TAIL_LINES = 40
# sockaddr_un.sun_path is 108 bytes on Linux, including the final NUL byte.
MAX_UNIX_SOCKET_PATH_BYTES = 107
# SPIRE's default join token lifetime. A token is used once, at first start.
JOIN_TOKEN_TTL_SECONDS = 600
# Attempts to start the server when another process takes its chosen port
# between choosing the port and SPIRE binding it.
SERVER_START_ATTEMPTS = 3


class SpireError(RuntimeError):
    """A SPIRE process failed to start, stop or serve what was expected."""


class CommandError(SpireError):
    """A SPIRE command exited with a nonzero code or timed out."""

    def __init__(self, args: Sequence[str], returncode: int | None, stderr: str):
        self.args_list = list(args)
        self.returncode = returncode
        self.stderr = stderr
        status = "timed out" if returncode is None else f"exited with code {returncode}"
        super().__init__(
            f"command {' '.join(self.args_list)} {status}. stderr tail:\n{tail_lines(stderr)}"
        )


def tail_lines(text: str, count: int = LOG_TAIL_LINES) -> str:
    """Return the last ``count`` lines of ``text``."""
    return "\n".join(text.splitlines()[-count:])


def read_log_tail(path: Path) -> str:
    """Return the last lines of a log file, or a note when it is missing."""
    try:
        return tail_lines(path.read_text(errors="replace"))
    except FileNotFoundError:
        return f"(log file {path} not found)"


def run_command(args: Sequence[str], *, timeout: float = COMMAND_TIMEOUT_SECONDS) -> str:
    """Run a command and return its stdout, raising CommandError on failure."""
    try:
        completed = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as error:
        stderr = error.stderr or ""
        if isinstance(stderr, bytes):
            stderr = stderr.decode(errors="replace")
        raise CommandError(args, None, stderr) from error
    if completed.returncode != 0:
        raise CommandError(args, completed.returncode, completed.stderr or completed.stdout)
    return completed.stdout


def spire_bin_dir() -> Path:
    """Locate spire-server and spire-agent, building them on first use.

    ``SPIRE_BIN_DIR`` takes precedence (for machines without Go). Otherwise
    ``scripts/install-spire`` builds SPIRE once into its cache folder and
    prints that folder as its last line.
    """
    configured = os.environ.get("SPIRE_BIN_DIR")
    if configured:
        bin_dir = Path(configured)
        for binary in ("spire-server", "spire-agent"):
            if not os.access(bin_dir / binary, os.X_OK):
                raise SpireError(
                    f"SPIRE_BIN_DIR={bin_dir} does not contain an executable {binary}. "
                    f"Point it at the bin/ folder of the SPIRE {SPIRE_VERSION} release tarball"
                )
        return bin_dir

    output = run_command([str(INSTALL_SCRIPT)], timeout=INSTALL_TIMEOUT_SECONDS)
    lines = output.strip().splitlines()
    if not lines:
        raise SpireError(f"{INSTALL_SCRIPT} printed no bin folder")
    return Path(lines[-1])


def make_workdir(name: str) -> Path:
    """Create a short-named temporary folder, because socket paths are limited."""
    return Path(tempfile.mkdtemp(prefix=f"e5s-{name}-", dir="/tmp"))


def check_socket_path(path: Path) -> None:
    """Raise SpireError when ``path`` is too long to bind as a Unix socket."""
    length = len(os.fsencode(path))
    if length > MAX_UNIX_SOCKET_PATH_BYTES:
        raise SpireError(
            f"Unix socket path {path} is {length} bytes, more than the "
            f"{MAX_UNIX_SOCKET_PATH_BYTES}-byte limit; use a shorter workdir"
        )


def pick_free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def hcl_string(value: str | os.PathLike[str]) -> str:
    """Quote a value as an HCL string (JSON string escapes are valid HCL)."""
    return json.dumps(os.fspath(value))


class SpireProcess:
    """A long-running SPIRE process with its output in a log file."""

    def __init__(self, name: str, log_path: Path):
        self.name = name
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self, args: Sequence[str]) -> None:
        # Append, so that the log of a restarted process keeps earlier runs.
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_healthy(self, healthcheck: Sequence[str], timeout: float) -> None:
        """Poll ``healthcheck`` until it succeeds, or raise SpireError."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            if not self.is_running():
                code = self.process.returncode if self.process else None
                raise SpireError(
                    f"{self.name} exited with code {code} during startup. "
                    f"log {self.log_path}:\n{read_log_tail(self.log_path)}"
                )
            try:
                run_command(healthcheck, timeout=COMMAND_TIMEOUT_SECONDS)
                return
            except CommandError as error:
                last_error = str(error)
            if time.monotonic() > deadline:
                self.stop()
                raise SpireError(
                    f"{self.name} was not healthy after {timeout:.0f} s. Last healthcheck: "
                    f"{last_error}\nlog {self.log_path}:\n{read_log_tail(self.log_path)}"
                )
            time.sleep(POLL_INTERVAL_SECONDS)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Send SIGTERM, then SIGKILL if the process is still running after ``timeout``."""
        if not self.is_running():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """Send SIGKILL and reap the process."""
        if not self.is_running():
            return
        assert self.process is not None
        self.process.kill()
        self.process.wait()


class SpireServer:
    """One spire-server with a sqlite datastore, an in-memory CA key and join_token attestation."""

    def __init__(
        self,
        workdir: Path,
        trust_domain: str,
        bin_dir: Path,
        *,
        ca_ttl: str = "24h",
        default_x509_svid_ttl: str = "1h",
    ):
        self.workdir = Path(workdir)
        self.trust_domain = trust_domain
        self.bin_dir = Path(bin_dir)
        self.ca_ttl = ca_ttl
        self.default_x509_svid_ttl = default_x509_svid_ttl
        self.socket_path = self.workdir / "server.sock"
        self.config_path = self.workdir / "server.conf"
        self.data_dir = self.workdir / "server-data"
        self.port: int | None = None
        self._process = SpireProcess(f"spire-server ({trust_domain})", self.workdir / "server.log")
        check_socket_path(self.socket_path)

    @property
    def log_path(self) -> Path:
        return self._process.log_path

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def executable(self) -> str:
        return str(self.bin_dir / "spire-server")

    def write_config(self) -> None:
        assert self.port is not None
        self.config_path.write_text(
            f"""server {{
    bind_address = "127.0.0.1"
    bind_port = {self.port}
    socket_path = {hcl_string(self.socket_path)}
    trust_domain = {hcl_string(self.trust_domain)}
    data_dir = {hcl_string(self.data_dir)}
    log_level = "DEBUG"
    ca_ttl = {hcl_string(self.ca_ttl)}
    default_x509_svid_ttl = {hcl_string(self.default_x509_svid_ttl)}
}}

plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = {hcl_string(self.data_dir / "datastore.sqlite3")}
        }}
    }}

    KeyManager "memory" {{
        plugin_data {{}}
    }}

    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
}}
"""
        )

    def start(self) -> None:
        """Start the server and wait until its healthcheck passes."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, SERVER_START_ATTEMPTS + 1):
            self.port = pick_free_port()
            self.write_config()
            self._process.spawn([self.executable, "run", "-config", str(self.config_path)])
            try:
                self._process.wait_healthy(
                    [self.executable, "healthcheck", "-socketPath", str(self.socket_path)],
                    STARTUP_TIMEOUT_SECONDS,
                )
                return
            except SpireError:
                port_taken = "address already in use" in read_log_tail(self.log_path)
                if not port_taken or attempt == SERVER_START_ATTEMPTS:
                    raise

    def stop(self) -> None:
        self._process.stop()

    def run(self, *args: str) -> str:
        """Run ``spire-server <args> -socketPath <this server's socket>`` and return stdout.

        The socket flag is appended after the subcommand words, so pass the
        subcommand first, e.g. ``run("localauthority", "x509", "prepare")``.
        """
        return run_command([self.executable, *args, "-socketPath", str(self.socket_path)])

    def join_token(self, spiffe_id: str | None = None, ttl: int = JOIN_TOKEN_TTL_SECONDS) -> str:
        """Generate a one-time join token, optionally aliased to ``spiffe_id``."""
        args = ["token", "generate", "-ttl", str(ttl)]
        if spiffe_id is not None:
            args += ["-spiffeID", spiffe_id]
        output = self.run(*args)
        # Output format: "Token: <uuid>", plus a warning line without -spiffeID.
        for line in output.splitlines():
            if line.startswith("Token:"):
                return line.split(":", 1)[1].strip()
        raise SpireError(f"token generate printed no 'Token:' line:\n{output}")

    def create_entry(
        self,
        spiffe_id: str,
        parent_id: str,
        selectors: list[str],
        x509_svid_ttl: int | None = None,
        federates_with: Iterable[str] = (),
        dns_names: Iterable[str] = (),
    ) -> str:
        """Create a workload registration entry and return its entry ID."""
        args = ["entry", "create", "-output", "json", "-spiffeID", spiffe_id, "-parentID", parent_id]
        for selector in selectors:
            args += ["-selector", selector]
        if x509_svid_ttl is not None:
            args += ["-x509SVIDTTL", str(x509_svid_ttl)]
        for trust_domain_id in federates_with:
            args += ["-federatesWith", trust_domain_id]
        for dns_name in dns_names:
            args += ["-dns", dns_name]
        output = self.run(*args)
        try:
            result = json.loads(output)["results"][0]
            return result["entry"]["id"]
        except (ValueError, KeyError, IndexError) as error:
            raise SpireError(f"entry create returned no entry ID:\n{output}") from error

    def delete_entry(self, entry_id: str) -> None:
        self.run("entry", "delete", "-entryID", entry_id)

    def bundle_pem(self) -> str:
        """Return this server's X.509 trust bundle as PEM."""
        return self.run("bundle", "show", "-format", "pem")

    def bundle_set(self, trust_domain: str, pem: str) -> None:
        """Store ``pem`` as the federated bundle of ``trust_domain``."""
        bundle_path = self.workdir / f"bundle-{trust_domain}.pem"
        bundle_path.write_text(pem)
        self.run(
            "bundle", "set", "-format", "pem", "-id", f"spiffe://{trust_domain}",
            "-path", str(bundle_path),
        )

    def bundle_delete(self, trust_domain: str) -> None:
        self.run("bundle", "delete", "-id", f"spiffe://{trust_domain}")


class SpireAgent:
    """One spire-agent attested by a join token, serving the Workload API on a Unix socket.

    The agent keeps its key on disk in ``data_dir``, so that ``restart()``
    after ``stop()`` or ``kill()`` reuses its SVID. A join token is valid for
    one attestation only, and an in-memory key would force a new one.
    """

    def __init__(self, workdir: Path, server: SpireServer, join_token: str, bin_dir: Path):
        self.workdir = Path(workdir)
        self.server = server
        self.join_token = join_token
        self.bin_dir = Path(bin_dir)
        self.config_path = self.workdir / "agent.conf"
        self.data_dir = self.workdir / "agent-data"
        self.bundle_path = self.workdir / "bootstrap-bundle.pem"
        self._socket_path = self.workdir / "agent.sock"
        self._process = SpireProcess(f"spire-agent ({self.spiffe_id})", self.workdir / "agent.log")
        check_socket_path(self._socket_path)

    @property
    def socket_path(self) -> Path:
        """Path of the Workload API Unix socket."""
        return self._socket_path

    @property
    def spiffe_id(self) -> str:
        """Agent ID that SPIRE 1.15.3 assigns to a join_token agent."""
        return f"spiffe://{self.server.trust_domain}/spire/agent/join_token/{self.join_token}"

    @property
    def log_path(self) -> Path:
        return self._process.log_path

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def executable(self) -> str:
        return str(self.bin_dir / "spire-agent")

    def write_config(self) -> None:
        assert self.server.port is not None, "start the server before the agent"
        self.bundle_path.write_text(self.server.bundle_pem())
        self.config_path.write_text(
            f"""agent {{
    data_dir = {hcl_string(self.data_dir)}
    log_level = "DEBUG"
    server_address = "127.0.0.1"
    server_port = {self.server.port}
    socket_path = {hcl_string(self._socket_path)}
    trust_bundle_path = {hcl_string(self.bundle_path)}
    trust_domain = {hcl_string(self.server.trust_domain)}
    join_token = {hcl_string(self.join_token)}
}}

plugins {{
    KeyManager "disk" {{
        plugin_data {{
            directory = {hcl_string(self.data_dir)}
        }}
    }}

    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}

    WorkloadAttestor "unix" {{
        plugin_data {{}}
    }}
}}
"""
        )

    def start(self) -> None:
        """Start the agent and wait until its healthcheck passes."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self._process.spawn([self.executable, "run", "-config", str(self.config_path)])
        self._process.wait_healthy(
            [self.executable, "healthcheck", "-socketPath", str(self._socket_path)],
            STARTUP_TIMEOUT_SECONDS,
        )

    def stop(self) -> None:
        self._process.stop()

    def kill(self) -> None:
        """Kill the agent with SIGKILL, to simulate losing it."""
        self._process.kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    def fetch_x509(self, write_dir: Path | None = None) -> str:
        """Fetch this process's X.509-SVIDs from the Workload API and return the CLI output.

        With ``write_dir``, the CLI also writes svid.N.pem, svid.N.key,
        bundle.N.pem and federated_bundle.N.M.pem into that folder.
        """
        args = [self.executable, "api", "fetch", "x509", "-socketPath", str(self._socket_path)]
        if write_dir is not None:
            args += ["-write", str(write_dir)]
        return run_command(args)

    def served_spiffe_ids(self) -> list[str]:
        """Return the SPIFFE IDs that the Workload API serves to this process."""
        output = run_command(
            [self.executable, "api", "fetch", "x509", "-output", "json",
             "-socketPath", str(self._socket_path)]
        )
        # The output is one X509SVIDResponse in protobuf JSON form:
        # {"svids": [{"spiffe_id": ..., "x509_svid": <base64 DER>, ...}], ...}
        try:
            response = json.loads(output)
            return [svid["spiffe_id"] for svid in response.get("svids", [])]
        except (ValueError, AttributeError, KeyError, TypeError) as error:
            raise SpireError(f"api fetch x509 -output json returned unexpected output:\n{output}") from error


class SpireLab:
    """One server for ``example.org`` and two agents, "node-a" and "node-b".

    Both agents run under the same uid, so the unix:uid selector alone cannot
    tell two workloads apart. Each agent is one simulated node, and each
    workload is registered under one agent to get a distinct SPIFFE ID.
    """

    TRUST_DOMAIN = "example.org"
    AGENT_NAMES = ("node-a", "node-b")

    def __init__(self, bin_dir: Path | None = None):
        self.bin_dir = bin_dir
        self.workdirs: list[Path] = []
        self.server: SpireServer | None = None
        self.agents: dict[str, SpireAgent] = {}
        self.startup_seconds: dict[str, float] = {}

    def __enter__(self) -> SpireLab:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _workdir(self, name: str) -> Path:
        workdir = make_workdir(name)
        self.workdirs.append(workdir)
        return workdir

    def start(self) -> None:
        bin_dir = self.bin_dir or spire_bin_dir()
        self.bin_dir = bin_dir

        started = time.monotonic()
        self.server = SpireServer(self._workdir("server"), self.TRUST_DOMAIN, bin_dir)
        self.server.start()
        self.startup_seconds["server"] = time.monotonic() - started

        for name in self.AGENT_NAMES:
            started = time.monotonic()
            agent = SpireAgent(self._workdir(name), self.server, self.server.join_token(), bin_dir)
            self.agents[name] = agent
            agent.start()
            self.startup_seconds[name] = time.monotonic() - started

    def add_agent(self, name: str) -> SpireAgent:
        """Start one more agent (one more simulated node) of this lab's server."""
        assert self.server is not None and self.bin_dir is not None
        agent = SpireAgent(self._workdir(name), self.server, self.server.join_token(), self.bin_dir)
        self.agents[name] = agent
        agent.start()
        return agent

    @property
    def node_a(self) -> SpireAgent:
        return self.agents["node-a"]

    @property
    def node_b(self) -> SpireAgent:
        return self.agents["node-b"]

    def register_workload(
        self, agent: SpireAgent, spiffe_id: str, *, x509_svid_ttl: int | None = None
    ) -> str:
        """Register ``spiffe_id`` for this uid's processes on ``agent`` and return the entry ID."""
        assert self.server is not None
        return self.server.create_entry(
            spiffe_id,
            parent_id=agent.spiffe_id,
            selectors=[f"unix:uid:{os.getuid()}"],
            x509_svid_ttl=x509_svid_ttl,
        )

    def wait_for_svid(
        self, agent: SpireAgent, spiffe_id: str, timeout: float = SVID_TIMEOUT_SECONDS
    ) -> float:
        """Poll ``agent`` until it serves ``spiffe_id`` and return the seconds waited."""
        started = time.monotonic()
        deadline = started + timeout
        last_result = ""
        while True:
            try:
                served = agent.served_spiffe_ids()
                if spiffe_id in served:
                    return time.monotonic() - started
                last_result = f"served IDs: {served}"
            except CommandError as error:
                # Before the first sync, the Workload API rejects the call
                # with PermissionDenied "no identity issued".
                last_result = str(error)
            if time.monotonic() > deadline:
                raise SpireError(
                    f"agent {agent.spiffe_id} did not serve {spiffe_id} within {timeout:.0f} s. "
                    f"Last result: {last_result}\nagent log {agent.log_path}:\n"
                    f"{read_log_tail(agent.log_path)}"
                )
            time.sleep(POLL_INTERVAL_SECONDS)

    def close(self) -> None:
        """Stop every process, then remove the workdirs unless E5S_KEEP_SPIRE=1."""
        for agent in self.agents.values():
            agent.stop()
        if self.server is not None:
            self.server.stop()
        if os.environ.get("E5S_KEEP_SPIRE") == "1":
            return
        for workdir in self.workdirs:
            shutil.rmtree(workdir, ignore_errors=True)
