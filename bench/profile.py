"""Profile e5s-proxy under load with py-spy and summarize the self time per function."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

# py-spy's default sampling rate, in samples per second.
SAMPLE_RATE = 100


def find_py_spy() -> str:
    """Return the py-spy next to this interpreter, or the one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    found = shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed; install it with `.venv/bin/pip install py-spy`")
    return found


def record(pids: dict[str, int], seconds: float, out_dir: Path, load_command: list[str]) -> dict[str, Path]:
    """Run ``load_command`` while py-spy records each PID for ``seconds``; return the profile paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    py_spy = find_py_spy()
    load = subprocess.Popen(load_command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    recorders = {}
    paths = {}
    try:
        for name, pid in pids.items():
            paths[name] = out_dir / f"{name}.speedscope.json"
            recorders[name] = subprocess.Popen(
                [py_spy, "record", "-d", f"{seconds:g}", "-r", str(SAMPLE_RATE), "--format", "speedscope",
                 "-o", str(paths[name]), "-p", str(pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        for name, recorder in recorders.items():
            _, stderr = recorder.communicate(timeout=seconds + 60)
            if recorder.returncode != 0:
                raise RuntimeError(f"py-spy record of {name} exited with {recorder.returncode}:\n{stderr}")
    finally:
        load.wait(timeout=seconds + 60)
    return paths


def main_thread_profile(path: Path) -> tuple[list[dict], dict]:
    """Return the speedscope frames and the profile of the reactor thread ("MainThread").

    The other threads (Twisted's thread pool, the Workload API watcher and
    gRPC) only wait, and py-spy still samples some of their lock waits as
    active, which would hide the reactor's own split.
    """
    data = json.loads(path.read_text())
    for thread_profile in data["profiles"]:
        if '"MainThread"' in thread_profile["name"]:
            return data["shared"]["frames"], thread_profile
    raise RuntimeError(f"{path} has no MainThread profile")


def top_self_time(path: Path, count: int = 12) -> tuple[float, list[tuple[float, str]]]:
    """Return the reactor thread's active seconds and its top frames by self time.

    Each row is (percent of the thread's active samples, "function (file:line)").
    """
    frames, thread_profile = main_thread_profile(path)
    self_weight: Counter[int] = Counter()
    total = 0.0
    for stack, weight in zip(thread_profile["samples"], thread_profile["weights"]):
        if not stack:
            continue
        self_weight[stack[-1]] += weight
        total += weight
    rows = []
    for frame_index, weight in self_weight.most_common(count):
        frame = frames[frame_index]
        location = frame.get("file", "?")
        location = location.split("site-packages/")[-1].split("/work/main/")[-1]
        rows.append((100.0 * weight / total, f"{frame['name']} ({location}:{frame.get('line')})"))
    return total, rows


def render(paths: dict[str, Path], seconds: float | None = None) -> str:
    lines = []
    for name, path in paths.items():
        active_seconds, rows = top_self_time(path)
        duration = f" of {seconds:g} s" if seconds else ""
        lines += [
            f"{name}: reactor thread active for {active_seconds:.1f} s{duration} ({path})",
            "",
            "| self % | function (file:line) |",
            "| ---: | --- |",
        ]
        lines += [f"| {percent:.1f} | `{where}` |" for percent, where in rows]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    # Re-render saved profiles: python -m bench.profile DIR/outbound.speedscope.json ...
    print(render({Path(argument).name.split(".")[0]: Path(argument) for argument in sys.argv[1:]}))
