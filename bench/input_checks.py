"""Benchmark the participant level's input checks on a real dataset (default: ds000011, 14 T1w).

Prints the median wall time of each stage over a few repeats: BIDS validator,
pybids indexing, image checks of every selected T1w. Usage:

    .venv/bin/python bench/input_checks.py [BIDS_DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bids_app.bids import image_checks, layout, validator

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ds000011"


def timed(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bids_dir", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    t_val, res = timed(lambda: validator.run_validator(args.bids_dir), args.repeats)
    t_lay, lay = timed(lambda: layout.load_layout(args.bids_dir), args.repeats)
    inputs = layout.collect_inputs(lay, sorted(lay.get_subjects()))
    t1ws = [s.t1w for s in inputs if s.t1w]
    t_img, _ = timed(lambda: [image_checks.check_image(p, "sform") for p in t1ws], args.repeats)
    print(f"dataset: {args.bids_dir} ({len(t1ws)} T1w), median of {args.repeats}")
    print(f"  bids-validator-deno : {t_val:7.2f} s  ({sum(len(v) for v in res.errors.values())} errors)")
    print(f"  pybids index        : {t_lay:7.2f} s")
    print(f"  image checks        : {t_img:7.2f} s  ({t_img / max(len(t1ws), 1) * 1000:.0f} ms per T1w)")


if __name__ == "__main__":
    main()
