"""One settings object, built from the command line, read by every level."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import psutil

DEFAULT_TEMPLATE = "MNI152NLin2009cAsym"
DEFAULT_OUTPUT_RESOLUTION = 2.0
SKULL_STRIP_MODES = ("auto", "deepbet", "ants", "skip")
AFFINE_SOURCES = ("strict", "sform", "qform")


def _absolute(path) -> Path:
    """Absolute, normalized path (``..`` removed) without resolving symlinks."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def default_nprocs() -> int:
    """CPUs this process may use (respects affinity masks set by SLURM/cgroups)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def default_mem_gb() -> float:
    """90 % of the memory available now, in GB."""
    return round(psutil.virtual_memory().available / 1024**3 * 0.9, 1)


@dataclass
class Settings:
    """Everything a run needs to know; paths are absolute."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    participant_label: list[str] = field(default_factory=list)
    session_label: list[str] = field(default_factory=list)
    skip_bids_validator: bool = False
    bids_database_dir: Path | None = None
    nprocs: int = field(default_factory=default_nprocs)
    omp_nthreads: int = 0
    mem_gb: float = field(default_factory=default_mem_gb)
    template: str = DEFAULT_TEMPLATE
    output_resolution: float = DEFAULT_OUTPUT_RESOLUTION
    atlases: list[str] = field(default_factory=list)
    skull_strip: str = "auto"
    affine_source: str = "strict"
    cortical_thickness: bool = False
    # group level
    model: str | None = None
    contrast: str | None = None
    measures: list[str] = field(default_factory=lambda: ["gm_ml"])
    roi_atlases: list[str] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)
    exclude_qc: list[str] = field(default_factory=lambda: ["fail"])
    exclude: list[str] = field(default_factory=list)
    min_p_accept: float | None = None
    alpha: float = 0.05
    smoothing_fwhm: float = 8.0
    height_control: str = "fdr"
    cluster_extent: int = 0
    n_perm: int = 5000
    tfce: bool = True
    vbm: bool = True
    random_seed: int = 0
    verbose: int = 0
    debug: bool = False
    dry_run: bool = False

    def __post_init__(self):
        self.bids_dir = _absolute(self.bids_dir)
        self.output_dir = _absolute(self.output_dir)
        self.work_dir = _absolute(self.work_dir)
        if self.bids_database_dir is not None:
            self.bids_database_dir = _absolute(self.bids_database_dir)
        if not self.omp_nthreads:
            self.omp_nthreads = min(self.nprocs, 8)

    @classmethod
    def from_args(cls, args) -> "Settings":
        """Build from an ``argparse.Namespace`` produced by :func:`bids_app.cli.build_parser`."""
        work_dir = args.work_dir or Path.cwd() / "work"
        kwargs = dict(
            bids_dir=args.bids_dir,
            output_dir=args.output_dir,
            analysis_level=args.analysis_level,
            work_dir=work_dir,
            participant_label=args.participant_label or [],
            session_label=args.session_label or [],
            skip_bids_validator=args.skip_bids_validator,
            bids_database_dir=args.bids_database_dir,
            template=args.template,
            output_resolution=args.output_resolution,
            atlases=list(args.atlas) if args.atlas else [],
            skull_strip=args.skull_strip,
            affine_source=args.affine_source,
            cortical_thickness=getattr(args, "cortical_thickness", False),
            model=args.model,
            contrast=" ".join(args.contrast) if args.contrast else None,
            measures=list(args.measure),
            roi_atlases=list(args.roi_atlas or []),
            regions=list(args.regions or []),
            exclude_qc=list(args.exclude_qc),
            exclude=[x.removeprefix("sub-") for x in args.exclude],
            min_p_accept=args.min_p_accept,
            alpha=args.alpha,
            smoothing_fwhm=args.smoothing_fwhm,
            height_control=args.height_control,
            cluster_extent=args.cluster_extent,
            n_perm=args.n_perm,
            tfce=not args.no_tfce,
            vbm=not args.no_vbm,
            random_seed=args.random_seed,
            verbose=args.verbose,
            debug=args.debug,
            dry_run=args.dry_run,
        )
        if args.nprocs:
            kwargs["nprocs"] = args.nprocs
        if args.omp_nthreads:
            kwargs["omp_nthreads"] = args.omp_nthreads
        if args.mem_gb:
            kwargs["mem_gb"] = args.mem_gb
        return cls(**kwargs)
