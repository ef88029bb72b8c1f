"""``python -m bids_app.demo {make,run}``: build the demo dataset; run both levels on it.

    python -m bids_app.demo make DIR [--n-subjects 8] [--seed 0] [--resolution 1|2] [--force]
    python -m bids_app.demo run --bids-dir DIR --output-dir OUT --work-dir WORK [make options]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import EX_SOFTWARE, EX_USAGE, MorphoBIDSError
from .build import default_jobs, make_dataset


def _add_make_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-subjects", type=int, default=8, help="number of subjects, half patients (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same dataset (default 0)")
    parser.add_argument(
        "--resolution", type=int, choices=(1, 2), default=1,
        help="voxel size in mm (default 1; 2 is ~8x faster, for smoke tests)",
    )
    parser.add_argument("--n-jobs", type=int, default=None, help=f"processes (default {default_jobs()})")
    parser.add_argument(
        "--cache-dir", type=Path, default=None,
        help=(
            "folder that keeps the head-space truth between builds, so the template registration runs once "
            "(default: $MORPHOBIDS_DEMO_CACHE, else <prefix>/share/morphobids/demo-head)"
        ),
    )
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write that folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bids_app.demo",
        description="MorphoBIDS demo: a BIDS dataset of phantoms made from a real head, with ground truth.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make", help="write the demo dataset")
    make.add_argument("bids_dir", type=Path, help="where to write the dataset (must be empty or absent)")
    make.add_argument("--force", action="store_true", help="replace a non-empty bids_dir")
    _add_make_options(make)
    run = sub.add_parser("run", help="make the dataset if missing, then run the participant and group levels")
    run.add_argument("--bids-dir", type=Path, required=True)
    run.add_argument("--output-dir", type=Path, required=True)
    run.add_argument("--work-dir", type=Path, required=True)
    run.add_argument("--n-perm", type=int, default=1000,
                     help="VBM permutations at the group level (default 1000; the app's default is 5000)")
    _add_make_options(run)
    return parser


def _cache(args):
    return False if args.no_cache else (args.cache_dir or True)


def _is_dataset(path: Path) -> bool:
    return (path / "dataset_description.json").is_file()


def cmd_make(args) -> int:
    make_dataset(
        args.bids_dir, n_subjects=args.n_subjects, seed=args.seed, resolution=args.resolution,
        force=args.force, n_jobs=args.n_jobs, cache=_cache(args),
    )
    return 0


def report_locations(out: Path) -> list[Path]:
    """The HTML reports under ``out`` (participant ``sub-*.html``, group ``group.html``)."""
    if not out.is_dir():
        return []
    return sorted(out.glob("sub-*.html")) + sorted(out.glob("group.html"))


def cmd_run(args) -> int:
    bids_dir, out, work = args.bids_dir, args.output_dir, args.work_dir
    if _is_dataset(bids_dir):
        print(f"demo: using the existing dataset {bids_dir}")
    else:
        make_dataset(bids_dir, n_subjects=args.n_subjects, seed=args.seed, resolution=args.resolution,
                     n_jobs=args.n_jobs, cache=_cache(args))
    from ..cli import main as app_main

    for level in ("participant", "group"):
        argv = [str(bids_dir), str(out), level, "-w", str(work)]
        if level == "group":
            argv += ["--n-perm", str(args.n_perm)]
        print(f"demo: morphobids {' '.join(argv)}", flush=True)
        code = app_main(argv)
        if code != 0:
            print(f"demo: the {level} level exited with code {code}; stopping.", file=sys.stderr)
            _print_reports(out)
            return code
    _print_reports(out)
    return 0


def _print_reports(out: Path) -> None:
    reports = report_locations(out)
    if reports:
        print("demo: reports:")
        for path in reports:
            print(f"  {path}")
    else:
        print(f"demo: no reports exist yet under {out}.")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EX_USAGE if exc.code not in (0, None) else 0
    try:
        return cmd_make(args) if args.command == "make" else cmd_run(args)
    except MorphoBIDSError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: say so plainly, with the traceback
        import traceback

        traceback.print_exc()
        print(f"demo: internal error: {exc}", file=sys.stderr)
        return EX_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
