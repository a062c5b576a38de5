"""CPU and wall time of a command run N times: ``python -m bench.command_cpu N COMMAND...``.

Each run's user + system CPU comes from ``os.wait4`` (the child's own, whatever else runs), so the
CPU figure holds under load where the wall time does not. Prints the median and the least of both,
and the load average. Example, a control command's start (docs/performance.md, "Control commands
and log tails")::

    python -m bench.command_cpu 5 sh -c "culm pause ID && culm resume ID --no-follow"
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time


def main(runs: int, command: list[str]) -> str:
    cpu: list[float] = []
    wall: list[float] = []
    for _ in range(runs):
        began = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, _, usage = os.wait4(child.pid, 0)
        wall.append(time.perf_counter() - began)
        cpu.append(usage.ru_utime + usage.ru_stime)
    return (f"cpu median {statistics.median(cpu):.3f}s min {min(cpu):.3f}s  wall median {statistics.median(wall):.3f}s "
            f"min {min(wall):.3f}s  ({runs} runs, load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    print(main(int(sys.argv[1]), sys.argv[2:]))
