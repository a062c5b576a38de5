"""Where the CPU of the distributed batch goes, by process group and by library:
``python -m bench.attribute [--batches 3] [--out DIR]`` (root; needs ``perf``).

Starts a cluster as ``bench.cpu distributed`` does (2 ``culm worker`` s, a fresh database, a
private Redis prefix), runs one batch of 100 x normal_pipeline to warm the workers, then records
``perf record -a -g`` over ``--batches`` more and prints, per process group (the database's
backends of the bench database or MariaDB's server, the workers' pool and main processes, the
submitter, Redis), the CPU seconds per batch and the shares of the libraries the samples fell in
(the interpreter, the kernel, libpq, postgres...). Samples are grouped by process, not thread: a
pool process runs the engine and user code on several threads. For what runs Python inside one
process, use ``py-spy record --gil --pid PID`` (``pip install py-spy``).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from bench.cpu import _db_pids, _db_server_word, _pids_with
from bench.scenarios import REDIS, Cluster, _children, submit_and_wait
from bench.trees import normal_pipeline

HZ = 1999
_SAMPLE = re.compile(r"\s*(\d+)/\d+\s+\S+\s+.*?\s+\((.*)\)\s*$")  # pid/tid ip symbol (dso)


def _roles(cluster: Cluster, database: str) -> dict[int, str]:
    roles = {os.getpid(): "submitter"}
    for proc in cluster.procs:
        roles[proc.pid] = "workers' main processes"
        roles.update(dict.fromkeys(_children(proc.pid), "pool processes"))
    roles.update(dict.fromkeys(_db_pids(_db_server_word(), database), "database server"))
    roles.update(dict.fromkeys(_pids_with("redis-server"), "Redis"))
    return roles


def record(batches: int, out: Path) -> tuple[Path, dict[int, str]]:
    """Warm the workers, then record every CPU during ``batches`` batches; the data file and
    which process is what."""
    from sqlalchemy.engine import make_url

    import culm

    with Cluster(2) as cluster:
        rt = culm.Runtime(cluster.db_url, broker=REDIS, prefix=cluster.prefix)
        try:
            submit_and_wait(rt, [normal_pipeline() for _ in range(100)], timeout=300)
            database = make_url(cluster.db_url).database or ""
            data = out / "perf.data"
            perf = subprocess.Popen(["perf", "record", "-a", "-g", "-F", str(HZ), "-o", str(data)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i in range(batches):
                took = submit_and_wait(rt, [normal_pipeline() for _ in range(100)], timeout=300)
                print(f"batch {i + 1}: {took:.3f} s", flush=True)
            perf.send_signal(signal.SIGINT)
            perf.wait(120)
            roles = _roles(cluster, database)  # backends that came during the run included
        finally:
            rt.close()
    return data, roles


def report(data: Path, roles: dict[int, str], batches: int) -> None:
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "pid,tid,ip,sym,dso", "-G"],
                            capture_output=True, text=True, check=True).stdout
    samples: collections.Counter[str] = collections.Counter()
    libraries: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in script.splitlines():
        m = _SAMPLE.match(line)
        role = roles.get(int(m.group(1))) if m else None
        if m and role:
            samples[role] += 1
            libraries[role][m.group(2).rsplit("/", 1)[-1]] += 1
    for role, n in samples.most_common():
        shares = ", ".join(f"{lib} {100 * k / n:.0f} %" for lib, k in libraries[role].most_common(4))
        print(f"{role}: {n / HZ / batches:.2f} CPU-s per batch ({shares})")
    print(f"sum: {sum(samples.values()) / HZ / batches:.2f} CPU-s per batch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attribute", description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="where perf.data goes (default: a temp dir)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="culm-attribute-"))
    out.mkdir(parents=True, exist_ok=True)
    data, roles = record(args.batches, out)
    report(data, roles, args.batches)
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)  # tens of MB of samples
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
