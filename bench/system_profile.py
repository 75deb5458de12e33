"""Optional py-spy profiles of the stack's processes during the system benchmark.

``BENCH_SYSTEM_PROFILE=15 python -m bench system`` samples every Parley process of the run for
15 s from the start of the last step (caches warm by then), writes
``var/bench-system/profile-<process>.txt`` (py-spy's collapsed stacks: ``frame;frame;… count``)
and prints the heaviest functions of each. py-spy is
in the ``bench`` extra; it needs ptrace permission over the processes (it has it over its own
children's siblings when run as the same user, or as root).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

OPTIONS = ("--nonblocking", "-f", "raw", "-o")


def start(pids: dict[str, int], seconds: float, directory: Path) -> list[subprocess.Popen[bytes]]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("  py-spy is not installed (pip install -e '.[bench]'): no profiles")
        return []
    started = []
    for name, pid in pids.items():
        if name in ("valkey", "load generator"):
            continue
        out = directory / f"profile-{name.replace(' ', '-')}.txt"
        started.append(
            subprocess.Popen(
                [
                    spy,
                    "record",
                    "-d",
                    str(int(seconds)),
                    "-r",
                    "200",
                    "-p",
                    str(pid),
                    *OPTIONS,
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return started


def heaviest(
    path: Path, count: int = 12
) -> tuple[int, list[tuple[float, str]], list[tuple[float, str]]]:
    """(samples, [(share, function)] by own time, [(share, function)] by inclusive time)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not number.isdigit():
            continue
        n = int(number)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return 0, [], []
    services = [
        (c / total, f) for f, c in inclusive.most_common() if "services/" in f or "bench/" in f
    ]
    return total, [(c / total, f) for f, c in own.most_common(count)], services[:count]


def finish(started: list[subprocess.Popen[bytes]], directory: Path) -> None:
    for process in started:
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
    for path in sorted(directory.glob("profile-*.txt")):
        total, own, ours = heaviest(path)
        print(f"\n  {path.name}: {total} samples")
        for share, frame in own:
            print(f"    own {share:6.1%}  {frame[:140]}")
        for share, frame in ours:
            print(f"    in  {share:6.1%}  {frame[:140]}")
