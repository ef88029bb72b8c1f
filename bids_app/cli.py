"""Command line of the BIDS App: ``run.py bids_dir output_dir {participant,group} [options]``.

Follows the BIDS Apps conventions (Gorgolewski et al., 2017) and the option names
fMRIPrep/sMRIPrep/MRIQC users already know. Errors a user can fix are printed as
one line with the fix and a non-zero exit code (64 for usage errors); tracebacks
only with ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bids_app import __version__
from bids_app.config import AFFINE_SOURCES, DEFAULT_OUTPUT_RESOLUTION, DEFAULT_TEMPLATE, SKULL_STRIP_MODES, Settings
from bids_app.errors import EX_SOFTWARE, MorphoBIDSError, UsageError

LOG = logging.getLogger("morphobids")

DESCRIPTION = f"""MorphoBIDS {__version__}: structural MRI BIDS App.

participant  per subject (and session): conform, N4 bias correction, brain extraction,
             normalization to {DEFAULT_TEMPLATE}, GM/WM/CSF segmentation, modulated
             maps for VBM, morphometrics (TIV, tissue and atlas-ROI volumes),
             MRIQC-compatible image-quality metrics and QC flags, an HTML report.
group        over the participants' derivatives in output_dir: aggregate tables, QC
             exclusion, ROI statistics and voxel-based morphometry, a group report.

"""

EPILOG = """examples:
  run.py /data /out participant --participant_label 01 02
  run.py /data /out group --model "group + age + sex + tiv" --contrast "group[T.patient]"
exit codes: 0 success; 1 some participants failed; 64 usage error; 65 bad input data;
  66 missing input; 69 missing resource; 70 internal error; 73 output not writable.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors become a :class:`UsageError` (exit 64, BIDS Apps style)."""

    def error(self, message):
        raise UsageError(f"{message}.", f"See `{self.prog} --help`.")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value:g}")
    return value


def _resolution(text: str) -> float:
    value = _positive_float(text)
    if value not in (1.0, 2.0):
        raise argparse.ArgumentTypeError(f"template-space outputs are available at 1 or 2 mm, got {value:g}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="morphobids",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="root folder of the input BIDS dataset (read only)")
    parser.add_argument("output_dir", type=Path,
                        help="output folder: the root of the derivative dataset (outside bids_dir)")
    parser.add_argument("analysis_level", choices=["participant", "group"],
                        help="participant: process each subject; group: statistics over processed subjects")
    parser.add_argument("--version", action="version", version=f"MorphoBIDS {__version__}")

    bids = parser.add_argument_group("BIDS input")
    bids.add_argument("--participant_label", "--participant-label", nargs="+", metavar="LABEL",
                      help="participants to process, with or without 'sub-' (default: all)")
    bids.add_argument("--session_label", "--session-label", nargs="+", metavar="LABEL",
                      help="sessions to process, with or without 'ses-' (default: all)")
    bids.add_argument("--skip_bids_validator", "--skip-bids-validation", action="store_true",
                      help="do not run the BIDS validator on bids_dir")
    bids.add_argument("--bids-database-dir", type=Path, metavar="PATH",
                      help="folder to keep (and reuse) the pybids index of a large dataset")
    bids.add_argument("--affine-source", choices=AFFINE_SOURCES, default="strict",
                      help="when qform and sform disagree by > 1 mm: 'strict' stops with an error (default); "
                           "'sform'/'qform' use that transform and record a warning")

    perf = parser.add_argument_group("Performance")
    perf.add_argument("-w", "--work-dir", type=Path, metavar="PATH",
                      help="working folder for intermediate results; keep it to resume (default: ./work)")
    perf.add_argument("--nprocs", "--n_cpus", "--n-cpus", type=_positive_int, metavar="N",
                      help="maximum number of processes (default: the CPUs available)")
    perf.add_argument("--omp-nthreads", type=_positive_int, metavar="N",
                      help="maximum threads per process (default: min(nprocs, 8))")
    perf.add_argument("--mem-gb", "--mem_gb", type=_positive_float, metavar="GB",
                      help="memory limit for scheduling, in GB (default: 90%% of the available memory)")

    wf = parser.add_argument_group("Workflow")
    wf.add_argument("--template", default=DEFAULT_TEMPLATE, metavar="NAME",
                    help=f"TemplateFlow template to normalize to (default: {DEFAULT_TEMPLATE})")
    wf.add_argument("--output-resolution", type=_resolution, default=DEFAULT_OUTPUT_RESOLUTION, metavar="MM",
                    help=f"voxel size of template-space outputs, 1 or 2 mm (default: {DEFAULT_OUTPUT_RESOLUTION:g})")
    wf.add_argument("--atlas", nargs="+", metavar="NAME",
                    help="atlases for ROI volumes (default: AAL3 Mori; `python -m bids_app.resources list`)")
    wf.add_argument("--skull-strip", choices=SKULL_STRIP_MODES, default="auto",
                    help="brain extraction: auto (deepbet unless the input is already brain-extracted), "
                         "deepbet, ants (template-based), skip (input is already brain-extracted)")
    wf.add_argument("--cortical-thickness", action="store_true",
                    help="also estimate cortical thickness (DiReCT/KellyKapowski, a few minutes per participant) "
                         "and add mean ROI thickness to the atlas tables")

    grp = parser.add_argument_group("Group level (statistics)")
    grp.add_argument("--model", metavar="FORMULA",
                     help="patsy formula over participants.tsv columns, tiv and IQMs, e.g. 'group + age + sex + tiv' "
                          "(default: group [+ age + sex] + tiv when participants.tsv has a group column, else age)")
    grp.add_argument("--contrast", nargs="+", metavar="TERM",
                     help="design column to test, e.g. 'group[T.patient]', or one weight per design column "
                          "(default: the group term, else age)")
    grp.add_argument("--measure", nargs="+", default=["gm_ml"], metavar="NAME",
                     help="ROI measure(s) to test: gm_ml, wm_ml, csf_ml, volume_ml, thickness_mm (default: gm_ml)")
    grp.add_argument("--roi-atlas", nargs="+", metavar="NAME", help="atlases for ROI statistics (default: all found)")
    grp.add_argument("--regions", nargs="+", metavar="NAME",
                     help="test only these ROIs (a hypothesis-driven set; corrections then run over them only)")
    grp.add_argument("--exclude-qc", nargs="+", choices=("fail", "warn"), default=["fail"], metavar="LEVEL",
                     help="exclude scans whose QC verdict is one of these (default: fail; 'fail warn' is stricter)")
    grp.add_argument("--exclude", nargs="+", default=[], metavar="LABEL",
                     help="participant labels (or sub-X_ses-Y) to exclude by hand")
    grp.add_argument("--min-p-accept", type=float, metavar="P",
                     help="also exclude scans whose QC classifier P(accept) is below P (the classifier's own "
                          "cut is 0.55, chosen on ABIDE sites it had not seen; a stricter rater is matched near 0.8)")
    grp.add_argument("--alpha", type=float, default=0.05, metavar="A",
                     help="significance level for FDR/FWE thresholds (default 0.05)")
    grp.add_argument("--smoothing-fwhm", type=float, default=8.0, metavar="MM",
                     help="Gaussian smoothing of modulated GM maps for VBM (default 8 mm)")
    grp.add_argument("--height-control", choices=("fdr", "fpr", "bonferroni", "none"), default="fdr",
                     help="parametric VBM threshold: FDR q<alpha (default), FPR p<0.001, Bonferroni, or none")
    grp.add_argument("--cluster-extent", type=int, default=0, metavar="VOXELS",
                     help="minimum cluster size for the parametric VBM maps (default 0)")
    grp.add_argument("--n-perm", type=int, default=5000, metavar="N",
                     help="permutations for FWE (max-t and TFCE) inference in VBM; 0 disables (default 5000)")
    grp.add_argument("--no-tfce", action="store_true", help="permutation inference on max-t only, without TFCE")
    grp.add_argument("--no-vbm", action="store_true", help="ROI statistics only")
    grp.add_argument("--random-seed", type=int, default=0, metavar="N",
                     help="seed of the permutations (default 0)")

    other = parser.add_argument_group("Other")
    other.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    other.add_argument("--debug", action="store_true", help="show tracebacks and keep all intermediate files")
    other.add_argument("--dry-run", action="store_true",
                       help="check inputs and resources, report what would be processed, process nothing")
    return parser


def setup_logging(verbose: int = 0, debug: bool = False) -> None:
    level = logging.DEBUG if debug or verbose > 1 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%H:%M:%S"))
    LOG.handlers[:] = [handler]
    LOG.setLevel(level)
    LOG.propagate = False


def print_error(exc: MorphoBIDSError) -> None:
    print(f"morphobids: error: {exc.message}" + (f" {exc.hint}" if exc.hint else ""), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the requested level; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
    except MorphoBIDSError as exc:
        print_error(exc)
        return exc.exit_code
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    setup_logging(args.verbose, args.debug)
    try:
        settings = Settings.from_args(args)
        if settings.analysis_level == "participant":
            from bids_app.participant.run import run_participant_level

            return run_participant_level(settings)
        from bids_app.group.run import run_group_level

        return run_group_level(settings)
    except MorphoBIDSError as exc:
        if debug:
            LOG.exception("error")
        print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("morphobids: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so plainly
        if debug:
            raise
        print(f"morphobids: internal error: {type(exc).__name__}: {exc}. "
              "Rerun with --debug for the traceback and please report it.", file=sys.stderr)
        return EX_SOFTWARE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
