"""``python -m bench [NAME ...] [--quick] [--repeats N] [options]``.

One NAME runs in this process. Several (or none: all but the ON_REQUEST ones, which train the
whole pipeline) run one after another, each in its own process, so that one benchmark's
memory, threads and child processes cannot touch the next one's figures; a benchmark that
fails is reported and the others still run.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time

from bench import BENCHMARKS, ON_REQUEST
from bench.common import base_parser


def parser():
    p = base_parser()
    p.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}",
    )
    for module in BENCHMARKS.values():
        importlib.import_module(module).add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    if len(args.names) == 1:
        importlib.import_module(BENCHMARKS[args.names[0]]).run(args).save()
        return 0
    options = [a for a in argv if a not in BENCHMARKS]
    failed = []
    start = time.time()
    for name in args.names or [n for n in BENCHMARKS if n not in ON_REQUEST]:
        code = subprocess.call([sys.executable, "-m", "bench", name, *options])
        if code:
            failed.append(name)
            print(f"benchmark {name} failed (exit code {code})", file=sys.stderr)
    print(f"\nall benchmarks: {time.time() - start:.0f} s; results in bench/results/")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
