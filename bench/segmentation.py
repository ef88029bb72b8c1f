"""Benchmark the tissue segmentation (bids_app.participant.segment).

``phantom``: on 1 mm demo phantoms (``python -m bids_app.demo make``), the EM segmentation
against the antspyx reference - ``ants.atropos`` at 1 mm with the warped template priors and
antspyx's defaults (5 iterations, prior weight 0.25; MRF ``[0.2,1x1x1]``, since the default
``[0.2,1x1]`` is 2-D) - on the same inputs: N4 (``bias.n4``), the true brain mask, priors
through ``register.register_to_template``. Prints wall and CPU time, peak memory (RSS
sampled every 20 ms, above the level before the call), Dice of each method against the true
hard labels and against each other, and the time ratio.

``real``: the chain conform -> N4 -> deepbet (or the input's own mask when it is already
brain-extracted) -> registration -> priors -> segmentation -> tissue volumes on real data
(default: the 14 ds000011 subjects, pumi-minitest and the stroke patient); prints TIV, tissue
volumes, BPF and GM fraction per subject, and writes them to ``--tsv`` if given.

    .venv/bin/python bench/segmentation.py phantom [--demo DIR] [--subjects 01 02] [--repeats 3]
    .venv/bin/python bench/segmentation.py real [--tsv out.tsv] [T1w.nii.gz ...]

The machine's load is printed with every result: timings on a shared box are noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import psutil

from bids_app.participant.bias import head_mask, n4
from bids_app.participant.conform import conform
from bids_app.participant.morphometry import tissue_volumes
from bids_app.arrays import bounding_box
from bids_app.participant.segment import TISSUES, atropos_segment, segment
from bids_app.resources import get_template

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TEMPLATE = "MNI152NLin2009cAsym"


# ------------------------------------------------------------------------ measuring


class PeakRSS:
    """Peak resident memory of this process during a ``with`` block (sampled), in GB."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.proc = psutil.Process()

    def __enter__(self):
        self.base = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def extra_gb(self) -> float:
        return (self.peak - self.base) / 1e9


def measure(fn, repeats: int) -> dict:
    """Run ``fn`` ``repeats`` times; median wall/CPU seconds, max peak memory, last result."""
    walls, cpus, peaks, result = [], [], [], None
    for _ in range(repeats):
        with PeakRSS() as mem:
            t0, c0 = time.perf_counter(), time.process_time()
            result = fn()
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        peaks.append(mem.extra_gb)
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus), "walls": walls,
            "peak_gb": max(peaks), "result": result}


def load_note() -> str:
    return "load average %.1f %.1f %.1f on %d cores" % (*os.getloadavg(), os.cpu_count())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0


# ------------------------------------------------------------------------ the chain


def loaded(img: nb.Nifti1Image) -> nb.Nifti1Image:
    """An in-memory float32 copy (so timings exclude decompression)."""
    return nb.Nifti1Image(np.asanyarray(img.dataobj).astype(np.float32), img.affine)


def native_priors(t1w_brain: nb.Nifti1Image, reference: nb.Nifti1Image, work: Path, how: str = "affine") -> dict:
    """Template tissue priors on ``reference``'s grid: ``how="pipeline"`` through
    ``register.register_to_template`` (rigid, affine, SyN at 2 mm), ``"affine"`` through a
    plain antspyx affine registration at 2 mm (fast; a harder test of the segmentation)."""
    if how == "pipeline":
        from bids_app.participant.register import register_to_template, to_native

        reg = register_to_template(t1w_brain, get_template(TEMPLATE, 1, "T1w", desc="brain"), work, nthreads=2,
                                   seed=1)
        return {t: loaded(to_native(get_template(TEMPLATE, 1, "probseg", label=t), reg, reference))
                for t in TISSUES}
    return affine_priors(t1w_brain, reference, work)


def affine_priors(t1w_brain: nb.Nifti1Image, reference: nb.Nifti1Image, work: Path) -> dict:
    """Template priors carried by an antspyx affine registration of the template brain (2 mm)."""
    import ants

    from bids_app.participant.antsio import from_ants, to_ants

    fixed = to_ants(t1w_brain)
    coarse = lambda im: ants.resample_image(im, (2, 2, 2), False, 0)  # noqa: E731
    moving = ants.image_read(str(get_template(TEMPLATE, 1, "T1w", desc="brain")))
    reg = ants.registration(coarse(fixed), coarse(moving), "Affine", random_seed=1, outprefix=str(work / "aff_"))
    return {t: from_ants(ants.apply_transforms(fixed, ants.image_read(str(get_template(TEMPLATE, 1, "probseg",
                                                                                           label=t))),
                                               reg["fwdtransforms"], interpolator="linear"), reference)
            for t in TISSUES}


def brain_mask_of(img: nb.Nifti1Image) -> tuple[nb.Nifti1Image, bool]:
    """(brain mask, prestripped): the input's own mask when already brain-extracted, else deepbet."""
    from bids_app.participant.skullstrip import deepbet_mask, is_brain_extracted, mask_from_stripped

    if is_brain_extracted(img):
        return mask_from_stripped(img), True
    return deepbet_mask(img, nthreads=2), False


def masked(img: nb.Nifti1Image, mask: nb.Nifti1Image) -> nb.Nifti1Image:
    return nb.Nifti1Image(img.get_fdata(dtype=np.float32) * (np.asanyarray(mask.dataobj) > 0), img.affine)


# ------------------------------------------------------------------------ phantom


def reference_atropos(t1w: nb.Nifti1Image, mask: nb.Nifti1Image, priors: dict) -> np.ndarray:
    """antspyx Atropos with antspyx's defaults on the full 1 mm grid; returns hard labels."""
    m = np.asanyarray(mask.dataobj) > 0
    q = atropos_segment(t1w.get_fdata(dtype=np.float32), m, np.stack([priors[t].get_fdata() for t in TISSUES]),
                        t1w.affine)
    labels = np.zeros(m.shape, np.uint8)
    labels[m] = np.argmax(q, axis=0) + 1
    return labels


def phantom_inputs(demo: Path, label: str, work: Path, how: str) -> tuple:
    """(N4-corrected T1w, true brain mask, priors, true hard labels) of one demo subject."""
    from bids_app.demo.build import GROUNDTRUTH, truth_paths

    truth = truth_paths(demo / GROUNDTRUTH, label)
    raw = loaded(nb.load(demo / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz"))
    corrected, _ = n4(raw, head_mask(raw))
    mask = nb.Nifti1Image((np.asanyarray(nb.load(truth["brain"]).dataobj) > 0).astype(np.uint8), raw.affine)
    priors = native_priors(masked(corrected, mask), corrected, work, how)
    return corrected, mask, priors, np.asanyarray(nb.load(truth["dseg"]).dataobj)


def ensure_demo(path: Path | None) -> Path:
    """The demo dataset at ``path``, built at 1 mm (8 subjects) in a cache folder when absent."""
    from bids_app.demo.build import make_dataset

    path = path or Path(tempfile.gettempdir()) / "morphobids-bench-demo-1mm"
    if not (path / "dataset_description.json").is_file():
        print(f"building the 1 mm demo in {path} ...", flush=True)
        make_dataset(path, n_subjects=8, seed=0, resolution=1, force=True, log=lambda *a: None)
    return path


def bench_phantom(args) -> None:
    demo = ensure_demo(args.demo)
    rows = []
    for label in args.subjects:
        with tempfile.TemporaryDirectory(prefix="morphobids-bench-") as work:
            t1w, mask, priors, truth = phantom_inputs(demo, label, Path(work), args.priors)
        em = measure(lambda: segment(t1w, mask, priors), args.repeats)
        ours = np.asanyarray(em["result"][1].dataobj)
        ref = measure(lambda: reference_atropos(t1w, mask, priors), args.ref_repeats)
        row = {"subject": label, "em": em, "ref": ref}
        for name, labels in (("em", ours), ("ref", ref["result"])):
            row[name]["dice"] = {t: dice(labels == k, truth == k) for k, t in enumerate(TISSUES, 1)}
        row["agreement"] = {t: dice(ours == k, ref["result"] == k) for k, t in enumerate(TISSUES, 1)}
        rows.append(row)
        print_phantom_row(row, mask)
    print(f"median over subjects: EM {statistics.median(r['em']['wall'] for r in rows):.1f} s, "
          f"Atropos {statistics.median(r['ref']['wall'] for r in rows):.1f} s "
          f"(ratio {statistics.median(r['ref']['wall'] / r['em']['wall'] for r in rows):.1f}x); {load_note()}")


def print_phantom_row(row: dict, mask: nb.Nifti1Image) -> None:
    m = np.asanyarray(mask.dataobj) > 0
    box = bounding_box(m, 2)
    print(f"sub-{row['subject']}: {int(m.sum())} brain voxels, box {tuple(s.stop - s.start for s in box)}; "
          f"{load_note()}")
    for name, title in (("em", "EM (segment)"), ("ref", "Atropos ref")):
        r = row[name]
        d = " ".join(f"{t} {v:.4f}" for t, v in r["dice"].items())
        print(f"  {title:13s} wall {r['wall']:6.1f} s (runs {', '.join(f'{w:.1f}' for w in r['walls'])}) "
              f"cpu {r['cpu']:6.1f} s  peak +{r['peak_gb']:.2f} GB  Dice vs truth: {d}")
    a = " ".join(f"{t} {v:.4f}" for t, v in row["agreement"].items())
    print(f"  EM vs Atropos Dice: {a}; Atropos/EM wall-time ratio {row['ref']['wall'] / row['em']['wall']:.1f}",
          flush=True)


# ------------------------------------------------------------------------ real data


def default_real_inputs() -> list[Path]:
    inputs = sorted((DATA / "ds000011").glob("sub-*/anat/sub-*_T1w.nii.gz"))
    inputs += sorted((DATA / "pumi-minitest").glob("sub-*/anat/sub-*_T1w.nii.gz"))
    inputs += sorted((DATA / "stroke-multicontrast").glob("sub-*/anat/sub-*_T1w.nii.gz"))
    return inputs


def process_real(path: Path, how: str) -> dict:
    """The participant chain up to tissue volumes, with per-step seconds."""
    t = {"start": time.perf_counter()}
    img, _ = conform(nb.load(path))
    mask, prestripped = brain_mask_of(img)
    t["mask"] = time.perf_counter()
    corrected, _ = n4(img, mask if prestripped else head_mask(img))
    t["n4"] = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="morphobids-bench-") as work:
        priors = native_priors(masked(corrected, mask), corrected, Path(work), how)
    t["priors"] = time.perf_counter()
    probseg, _ = segment(corrected, mask, priors)
    t["segment"] = time.perf_counter()
    vol = tissue_volumes(probseg, mask)
    steps = ["start", "mask", "n4", "priors", "segment"]
    vol["seconds"] = {b: round(t[b] - t[a], 1) for a, b in zip(steps, steps[1:])}
    vol["prestripped"] = prestripped
    return vol


def bench_real(args) -> None:
    import pandas as pd

    rows = []
    for path in args.inputs or default_real_inputs():
        name = f"{path.parents[2].name}/{path.name.split('_T1w')[0]}"
        vol = process_real(path, args.priors)
        rows.append({"input": name, **{k: v for k, v in vol.items() if k != "seconds"},
                     **{f"s_{k}": v for k, v in vol["seconds"].items()}})
        r = rows[-1]
        ok = 1100 <= r["tiv_ml"] <= 2000 and 0.35 <= r["gm_fraction"] <= 0.60
        print(f"{name:38s} TIV {r['tiv_ml']:7.1f} mL  GM {r['gm_ml']:6.1f}  WM {r['wm_ml']:6.1f}  "
              f"CSF {r['csf_ml']:6.1f}  BPF {r['bpf']:.3f}  GM/(GM+WM) {r['gm_fraction']:.3f}  "
              f"{'ok ' if ok else 'OUT'}  seg {r['s_segment']:.1f} s  ({load_note()})", flush=True)
    table = pd.DataFrame(rows)
    if args.tsv:
        table.to_csv(args.tsv, sep="\t", index=False)
    print(f"median segmentation {table['s_segment'].median():.1f} s over {len(table)} inputs")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    ph = sub.add_parser("phantom", help="EM vs antspyx Atropos on demo phantoms")
    ph.add_argument("--demo", type=Path, default=None, help="a 1 mm demo dataset (built when absent)")
    ph.add_argument("--subjects", nargs="+", default=["01", "02"])
    ph.add_argument("--repeats", type=int, default=3, help="runs of the EM per subject (median reported)")
    ph.add_argument("--ref-repeats", type=int, default=1, help="runs of the Atropos reference per subject")
    re_ = sub.add_parser("real", help="the chain on real T1w images: TIV and tissue fractions")
    re_.add_argument("inputs", nargs="*", type=Path)
    re_.add_argument("--tsv", type=Path, default=None)
    for p in (ph, re_):
        p.add_argument("--priors", choices=("affine", "pipeline"), default="affine",
                       help="how the template priors reach native space (default: affine at 2 mm, fast)")
    args = parser.parse_args(argv)
    (bench_phantom if args.mode == "phantom" else bench_real)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
