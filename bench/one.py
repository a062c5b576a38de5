"""Run ONE benchmark spec in this process and print its JSON result line.

``python -m bench.one NAME [--quick] [--repeats N]`` -- ``python -m bench`` starts one of these per
spec, so that the peak RSS each reports (``ru_maxrss``) is that spec's alone.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.scenarios import catalogue, run_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.one")
    parser.add_argument("name", help="a spec name, e.g. batch, scale_wide_10000, distributed_big_w2")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    specs = {s.name: s for s in catalogue("all", args.quick, args.repeats)}
    if args.name not in specs:
        parser.error(f"unknown spec {args.name!r}; known: {', '.join(specs)}")
    result = run_spec(specs[args.name])
    print(json.dumps(result), flush=True)
    return 0 if result.get("ok") is not False else 1


if __name__ == "__main__":
    sys.exit(main())
