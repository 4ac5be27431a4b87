"""Compare e5s-proxy with ghostunnel, nginx and a direct connection on real SPIRE.

Run it through bench/run, which installs nginx, wrk and ghostunnel first and
raises the open-file limit. See BENCHMARKS.md for what each scenario measures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench import profile, systems  # noqa: E402
from bench.systems import CLIENT_ID, SERVER_DNS_NAME, SERVER_ID, System  # noqa: E402
from harness.spire import SpireLab  # noqa: E402

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024
TLS_LOAD = Path(__file__).resolve().parent / "tls_load.py"
# wrk's own limit per run, on top of the run length.
WRK_GRACE_SECONDS = 30.0
IDLE_CONNECTIONS = 10000
PROFILE_SECONDS = 10


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    connections: int
    headers: tuple[str, ...] = ()


WRK_SCENARIOS = (
    Scenario("keepalive", "/small", 32),
    Scenario("close", "/small", 32, ("Connection: close",)),
    Scenario("1mib", "/1m", 8),
)


# ---------------------------------------------------------------------------
# Measurements from /proc


def cpu_seconds(pids: list[int]) -> float:
    """Return user+sys CPU seconds of ``pids`` (all threads) from /proc/PID/stat."""
    total_ticks = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            continue
        # The command name in brackets may contain spaces, so split after it.
        fields = text[text.rindex(")") + 2 :].split()
        total_ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return total_ticks / CLOCK_TICKS_PER_SECOND


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES
        except FileNotFoundError:
            continue
    return total


# ---------------------------------------------------------------------------
# wrk


_SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def parse_size(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)([KMGT]?B)", text)
    if not match:
        raise ValueError(f"invalid wrk size {text!r}: expected a number and B, KB, MB, GB or TB")
    return float(match.group(1)) * _SIZE_UNITS[match.group(2)]


def parse_milliseconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"invalid wrk time {text!r}: expected a number and us, ms, s, m or h")
    return float(match.group(1)) * _TIME_UNITS[match.group(2)]


def parse_wrk(output: str) -> dict:
    """Parse wrk 4.1 output with --latency into numbers."""
    summary = re.search(r"(\d+) requests in ([\d.]+\w+), ([\d.]+\w+) read", output)
    if not summary:
        raise ValueError(f"wrk printed no summary:\n{output}")
    result = {
        "requests": int(summary.group(1)),
        "seconds": parse_milliseconds(summary.group(2)) / 1000.0,
        "bytes": parse_size(summary.group(3)),
        "errors": 0,
    }
    for percentile in ("50", "99"):
        match = re.search(rf"^\s+{percentile}%\s+(\S+)", output, re.MULTILINE)
        result[f"p{percentile}_ms"] = parse_milliseconds(match.group(1)) if match else float("nan")
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors:
        result["errors"] += sum(int(value) for value in socket_errors.groups())
    bad_status = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if bad_status:
        result["errors"] += int(bad_status.group(1))
    return result


def run_wrk(system: System, scenario: Scenario, seconds: float) -> dict:
    command = [
        "wrk", "-t2", f"-c{scenario.connections}", f"-d{seconds:g}s", "--latency",
    ]
    for header in scenario.headers:
        command += ["-H", header]
    command.append(f"http://127.0.0.1:{system.client_port}{scenario.path}")
    pids = system.proxy_pids()
    cpu_before = cpu_seconds(pids)
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + WRK_GRACE_SECONDS, check=False
    )
    cpu_after = cpu_seconds(system.proxy_pids())
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {completed.returncode}:\n{completed.stderr}")
    result = parse_wrk(completed.stdout)
    result["requests_per_second"] = result["requests"] / result["seconds"]
    result["mib_per_second"] = result["bytes"] / result["seconds"] / MIB
    result["cpu_ms_per_request"] = (
        (cpu_after - cpu_before) * 1000.0 / result["requests"] if pids and result["requests"] else None
    )
    return result


# ---------------------------------------------------------------------------
# TLS load (handshake rate and idle connections)


def svid_arguments(svid_dir: Path) -> list[str]:
    return [
        "--cert", str(svid_dir / "svid.0.pem"),
        "--key", str(svid_dir / "svid.0.key"),
        "--ca", str(svid_dir / "bundle.0.pem"),
    ]


def run_handshakes(system: System, client_svid: Path, seconds: float) -> dict:
    command = [
        sys.executable, str(TLS_LOAD), "handshake", "--port", str(system.server_port),
        "--seconds", f"{seconds:g}", *svid_arguments(client_svid),
    ]
    pids = system.server_pids()
    cpu_before = cpu_seconds(pids)
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + WRK_GRACE_SECONDS + 60, check=False
    )
    cpu_after = cpu_seconds(system.server_pids())
    if completed.returncode != 0:
        raise RuntimeError(f"tls_load handshake exited with {completed.returncode}:\n{completed.stderr}")
    counts = json.loads(completed.stdout.strip().splitlines()[-1])
    connections = counts["connections"]
    return {
        "requests": connections,
        "seconds": counts["seconds"],
        "requests_per_second": connections / counts["seconds"],
        "errors": counts["errors"],
        "first_error": counts["first_error"],
        "cpu_ms_per_request": (cpu_after - cpu_before) * 1000.0 / connections if connections else None,
    }


def measure_idle_memory(system: System, client_svid: Path, count: int) -> dict:
    """Open ``count`` idle TLS connections to the server side and return its RSS growth."""
    pids = system.server_pids()
    rss_before = rss_bytes(pids)
    command = [
        sys.executable, str(TLS_LOAD), "idle", "--port", str(system.server_port),
        "--count", str(count), "--open-seconds", "120", "--hold-seconds", "60",
        *svid_arguments(client_svid),
    ]
    opener = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        first_line = opener.stdout.readline()
        if not first_line:
            raise RuntimeError(f"tls_load idle printed nothing:\n{opener.stderr.read()}")
        opened = json.loads(first_line)
        rss_after = rss_bytes(system.server_pids())
        opener.stdin.write("done\n")
        opener.stdin.flush()
        at_end = json.loads(opener.stdout.readline() or "{}")
        opener.wait(timeout=60)
    finally:
        if opener.poll() is None:
            opener.kill()
            opener.wait()
    return {
        **opened,
        **at_end,
        "rss_before_mib": rss_before / MIB,
        "rss_after_mib": rss_after / MIB,
        "rss_growth_mib": (rss_after - rss_before) / MIB,
    }


def profile_e5s(system: System, out_dir: Path) -> str:
    """Record both e5s-proxy processes under the keep-alive scenario and summarize them."""
    scenario = WRK_SCENARIOS[0]
    load_command = [
        "wrk", "-t2", f"-c{scenario.connections}", f"-d{PROFILE_SECONDS + 5:g}s",
        f"http://127.0.0.1:{system.client_port}{scenario.path}",
    ]
    # With workers the first PID is the supervisor, which serves nothing; profile a worker.
    pids = {"outbound": system.client_pids()[-1], "inbound": system.server_pids()[-1]}
    log(f"profiling e5s-proxy {pids} for {PROFILE_SECONDS} s into {out_dir}")
    paths = profile.record(pids, PROFILE_SECONDS, out_dir, load_command)
    return profile.render(paths, PROFILE_SECONDS)


# ---------------------------------------------------------------------------
# Report


def median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def summarize(runs: dict) -> dict:
    summary = {}
    for (system, scenario), results in runs.items():
        summary[(system, scenario)] = {
            key: median([result.get(key) for result in results])
            for key in ("requests_per_second", "mib_per_second", "p50_ms", "p99_ms", "cpu_ms_per_request")
        }
        summary[(system, scenario)]["errors"] = sum(result.get("errors", 0) for result in results)
        summary[(system, scenario)]["runs"] = len(results)
    return summary


def format_number(value: float | None, digits: int = 1) -> str:
    if value is None or value != value:  # None or NaN
        return "–"
    return f"{value:,.{digits}f}"


def render_table(summary: dict, idle: dict) -> str:
    lines = [
        "| scenario | system | req/s | MiB/s | p50 ms | p99 ms | proxy CPU ms/req | errors | runs |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (system, scenario), row in summary.items():
        lines.append(
            f"| {scenario} | {system} | {format_number(row['requests_per_second'], 0)} "
            f"| {format_number(row['mib_per_second'])} | {format_number(row['p50_ms'], 2)} "
            f"| {format_number(row['p99_ms'], 2)} | {format_number(row['cpu_ms_per_request'], 3)} "
            f"| {row['errors']} | {row['runs']} |"
        )
    if idle:
        lines += [
            "",
            "| idle inbound TLS connections | system | established | still open | RSS before MiB | RSS after MiB | growth MiB |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for system, row in idle.items():
            lines.append(
                f"| {IDLE_CONNECTIONS:,} | {system} | {row['established']} | {row['still_open']} "
                f"| {format_number(row['rss_before_mib'])} | {format_number(row['rss_after_mib'])} "
                f"| {format_number(row['rss_growth_mib'])} |"
            )
    return "\n".join(lines)


def ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or denominator is None or denominator == 0:
        return "n/a"
    return f"{numerator / denominator:.2f}"


def render_ratios(summary: dict, idle: dict, reference: str) -> str:
    def value(system: str, scenario: str, key: str) -> float | None:
        return summary.get((system, scenario), {}).get(key)

    checks = (
        ("keepalive req/s", "keepalive", "requests_per_second"),
        ("keepalive p99 latency", "keepalive", "p99_ms"),
        ("close req/s", "close", "requests_per_second"),
        ("1 MiB MB/s", "1mib", "mib_per_second"),
        ("handshake rate", "handshake", "requests_per_second"),
    )
    lines = [
        f"{label} ratio e5s-proxy/{reference}: "
        f"{ratio(value('e5s-proxy', scenario, key), value(reference, scenario, key))}"
        for label, scenario, key in checks
    ]
    for system in ("e5s-proxy", reference):
        if system in idle:
            lines.append(
                f"idle-connection memory {system}: {idle[system]['rss_growth_mib']:.1f} MiB "
                f"for {idle[system]['still_open']:,} open connections"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Orchestration


def fetch_svid(agent, spiffe_id: str, folder: Path) -> Path:
    folder.mkdir()
    agent.fetch_x509(folder)
    if not (folder / "svid.0.pem").exists():
        raise RuntimeError(f"spire-agent api fetch x509 wrote no svid.0.pem for {spiffe_id} into {folder}")
    return folder


def start_systems(stack: ExitStack, arguments, workdir: Path, lab: SpireLab, backend_port: int) -> list[System]:
    client_socket, server_socket = lab.node_a.socket_path, lab.node_b.socket_path
    client_svid = workdir / "client-svid"
    server_svid = workdir / "server-svid"
    started: list[System] = []

    def keep(system: System) -> None:
        stack.callback(system.stop)
        started.append(system)

    keep(systems.start_e5s(workdir, client_socket, server_socket, backend_port, arguments.e5s_workers))
    if arguments.ghostunnel:
        keep(systems.start_ghostunnel(workdir, Path(arguments.ghostunnel), client_socket, server_socket, backend_port))
    keep(systems.start_nginx_proxies(workdir, client_svid, server_svid, backend_port))
    keep(systems.start_direct(backend_port))
    return started


def log(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def run_benchmark(arguments) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="e5s-bench-", dir="/tmp"))
    os.chmod(workdir, 0o755)
    log(f"workdir {workdir}")
    runs: dict = {}
    idle: dict = {}
    with SpireLab() as lab, ExitStack() as stack:
        lab.register_workload(lab.node_a, CLIENT_ID)
        assert lab.server is not None
        lab.server.create_entry(
            SERVER_ID, parent_id=lab.node_b.spiffe_id, selectors=[f"unix:uid:{os.getuid()}"],
            dns_names=[SERVER_DNS_NAME],
        )
        lab.wait_for_svid(lab.node_a, CLIENT_ID)
        lab.wait_for_svid(lab.node_b, SERVER_ID)
        client_svid = fetch_svid(lab.node_a, CLIENT_ID, workdir / "client-svid")
        fetch_svid(lab.node_b, SERVER_ID, workdir / "server-svid")

        backend, backend_port = systems.start_backend(workdir)
        stack.callback(backend.stop)
        started = start_systems(stack, arguments, workdir, lab, backend_port)
        tls_systems = [system for system in started if system.server_port is not None]
        log("started " + ", ".join(system.name for system in started))

        for system in started:
            for scenario in WRK_SCENARIOS:
                run_wrk(system, scenario, 1)  # warm-up: connection pools, caches

        if not arguments.skip_idle:
            for system in tls_systems:
                log(f"idle connections: {system.name}")
                idle[system.name] = measure_idle_memory(system, client_svid, IDLE_CONNECTIONS)
                log(f"  {idle[system.name]}")
                # Let the server notice the closed connections before the next runs.
                time.sleep(3)

        for repetition in range(arguments.repetitions):
            for scenario in WRK_SCENARIOS:
                for system in started:
                    result = run_wrk(system, scenario, arguments.seconds)
                    runs.setdefault((system.name, scenario.name), []).append(result)
                    log(
                        f"rep {repetition + 1} {scenario.name:9} {system.name:10} "
                        f"{result['requests_per_second']:9.0f} req/s p99 {result['p99_ms']:.2f} ms "
                        f"errors {result['errors']}"
                    )
            for system in tls_systems:
                result = run_handshakes(system, client_svid, arguments.seconds)
                runs.setdefault((system.name, "handshake"), []).append(result)
                log(
                    f"rep {repetition + 1} handshake {system.name:10} {result['requests_per_second']:9.0f} conn/s "
                    f"errors {result['errors']} {result['first_error']}"
                )

        if arguments.profile:
            e5s = next(system for system in started if system.name == "e5s-proxy")
            profile_report = profile_e5s(e5s, Path(arguments.profile))

    summary = summarize(runs)
    reference = "ghostunnel" if arguments.ghostunnel else "nginx"
    report = render_table(summary, idle) + "\n\n" + render_ratios(summary, idle, reference) + "\n"
    if not arguments.ghostunnel:
        report += "\nghostunnel was not available, so the ratios compare e5s-proxy with nginx instead.\n"
    if arguments.profile:
        report += "\npy-spy self time of the reactor thread under keep-alive load (percent of its active samples):\n\n" + profile_report
    print(report)
    if arguments.json:
        Path(arguments.json).write_text(
            json.dumps(
                {
                    "runs": {f"{system}/{scenario}": results for (system, scenario), results in runs.items()},
                    "idle": idle,
                },
                indent=2,
            )
        )
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark e5s-proxy against ghostunnel, nginx and direct.")
    parser.add_argument("--quick", action="store_true", help="3 repetitions of 5 s runs (5 minutes on 2 cores with ghostunnel)")
    parser.add_argument("--repetitions", type=int, help="runs per system and scenario (default 5, --quick 3)")
    parser.add_argument("--seconds", type=float, help="length of each run in seconds (default 10, --quick 5)")
    parser.add_argument("--ghostunnel", help="path of the ghostunnel binary; without it ghostunnel is skipped")
    parser.add_argument("--skip-idle", action="store_true", help="skip the 10,000 idle connections test")
    parser.add_argument("--e5s-workers", type=int, default=1, help="the workers key of both e5s-proxy configs (default 1)")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="after the runs, record both e5s-proxy processes with py-spy for 10 s of keep-alive load into DIR",
    )
    parser.add_argument("--json", help="also write every run's numbers to this JSON file")
    arguments = parser.parse_args()
    if arguments.repetitions is None:
        arguments.repetitions = 3 if arguments.quick else 5
    if arguments.seconds is None:
        arguments.seconds = 5.0 if arguments.quick else 10.0
    return run_benchmark(arguments)


if __name__ == "__main__":
    sys.exit(main())
