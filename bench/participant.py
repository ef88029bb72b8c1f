"""Benchmark the whole participant level against a reference chain of antspyx defaults.

MorphoBIDS: ``run.py bids_dir out participant`` on one T1w (fresh work folder each
repeat, ``--nprocs``/``--omp-nthreads`` as given, 2 by default), timed per step from its
progress lines; peak memory is the summed RSS of the whole process tree, sampled every
0.1 s.

Reference: the same conformed T1w through antspyx with its defaults - N4
(``n4_bias_field_correction``), SyN (``registration(type_of_transform="SyN")``) of the
N4-corrected brain to the 1 mm template brain, the template priors pulled back with the
inverse transform, and ``atropos`` at 1 mm with those priors (5 iterations, prior weight
0.25, MRF ``[0.2,1x1x1]``). Brain extraction is not part of the reference: it uses
MorphoBIDS' brain mask. Threads: ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` = ``--nprocs``.

With ``--phantom DEMO_DIR`` the input is a demo subject (``python -m bids_app.demo make DIR
--resolution 1``), with ``--template-phantom SEED`` the whole template head under a known
map, bias and noise at 1 mm (:mod:`bids_app.demo.template_phantom`, exact truth); both
chains are then scored against the ground truth (Dice of the brain mask and of the GM/WM
labels).

    .venv/bin/python bench/participant.py [--t1w T1w.nii.gz | --phantom DEMO_DIR --subject 02
                                           | --template-phantom SEED]
                                          [--repeats 3] [--nprocs 2] [--no-reference]

Quote medians and ratios: the machine may be shared (its load is printed).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DEFAULT_T1W = DATA / "ds000011" / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
TEMPLATE = "MNI152NLin2009cAsym"
STEP_LINE = re.compile(r"\[(\S+)\] (\S+) done \(([\d.]+) s\)")


class TreePeak:
    """Peak of the summed RSS of a process and all its descendants (GB), sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.proc, self.interval, self.peak = psutil.Process(pid), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                total = sum(p.memory_info().rss for p in procs if p.is_running())
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def gb(self) -> float:
        return self.peak / 1e9


def load_note() -> str:
    return "load average %.1f %.1f %.1f on %d cores" % (*os.getloadavg(), os.cpu_count())


def make_bids(t1w: Path, folder: Path) -> Path:
    """A one-subject BIDS dataset holding a copy of ``t1w``."""
    bids = folder / "bids"
    anat = bids / "sub-01" / "anat"
    anat.mkdir(parents=True)
    shutil.copy(t1w, anat / "sub-01_T1w.nii.gz")
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "bench", "BIDSVersion": "1.10.0"}))
    return bids


def write_template_phantom(folder: Path, seed: int) -> tuple[Path, dict]:
    """The 1 mm template-head phantom's T1w and truth (brain mask, dseg) as files in ``folder``."""
    import nibabel as nb

    from bids_app.demo.template_phantom import make_template_phantom

    folder.mkdir(parents=True)
    phantom = make_template_phantom(1.0, seed=seed, head=True)
    paths = {"t1w": folder / "T1w.nii.gz", "brain": folder / "brain_mask.nii.gz", "dseg": folder / "dseg.nii.gz"}
    for key, img in (("t1w", phantom.image), ("brain", phantom.brain_mask), ("dseg", phantom.dseg())):
        img.header.set_xyzt_units("mm", "sec")
        nb.save(img, paths[key])
    return paths["t1w"], {"brain": paths["brain"], "dseg": paths["dseg"]}


# ------------------------------------------------------------------------ MorphoBIDS


def run_morphobids(bids: Path, folder: Path, nprocs: int) -> dict:
    """One fresh participant-level run; per-step seconds, wall time and peak memory."""
    out, work = folder / "out", folder / "work"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    cmd = [sys.executable, str(ROOT / "run.py"), str(bids), str(out), "participant", "-w", str(work),
           "--nprocs", str(nprocs), "--omp-nthreads", str(nprocs), "--skip_bids_validator"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    with TreePeak(proc.pid) as mem:
        _, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"MorphoBIDS failed (exit {proc.returncode}):\n{err[-3000:]}")
    steps = {m.group(2): float(m.group(3)) for m in STEP_LINE.finditer(err)}
    return {"wall": wall, "peak_gb": mem.gb, "steps": steps, "out": out, "work": work}


# ------------------------------------------------------------------------ the reference


def _reference(conformed: str, brain_mask: str, folder: str, threads: int, queue) -> None:
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    import ants

    from bids_app.participant.antsio import private_tempdir
    from bids_app.resources import get_template

    steps = {}
    t0 = time.perf_counter()
    img = ants.image_read(conformed)
    mask = ants.image_read(brain_mask)
    n4 = ants.n4_bias_field_correction(img)
    steps["n4"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    template = ants.image_read(str(get_template(TEMPLATE, 1, "T1w", desc="brain")))
    reg = ants.registration(fixed=template, moving=n4 * mask, type_of_transform="SyN",
                            outprefix=str(Path(folder) / "ref_"))
    steps["syn"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    priors = [ants.apply_transforms(fixed=n4, moving=ants.image_read(str(get_template(TEMPLATE, 1, "probseg",
                                                                                      label=t))),
                                    transformlist=reg["invtransforms"], whichtoinvert=[True, False])
              for t in ("GM", "WM", "CSF")]
    steps["priors"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with private_tempdir():
        seg = ants.atropos(a=n4, x=mask, i=priors, m="[0.2,1x1x1]", c="[5,0]", priorweight=0.25)
    steps["atropos"] = time.perf_counter() - t0
    dseg = str(Path(folder) / "ref_dseg.nii.gz")
    ants.image_write(seg["segmentation"], dseg)
    queue.put({"steps": steps, "dseg": dseg})


def run_reference(conformed: Path, brain_mask: Path, folder: Path, threads: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_reference, args=(str(conformed), str(brain_mask), str(folder), threads, queue))
    t0 = time.perf_counter()
    proc.start()
    with TreePeak(proc.pid) as mem:
        result = queue.get()
        proc.join()
    return {**result, "wall": time.perf_counter() - t0, "peak_gb": mem.gb}


# ------------------------------------------------------------------------ accuracy


def dice(a, b) -> float:
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0


def score(dseg_path: Path, truth: dict, brain_mask: Path | None = None) -> dict:
    """Dice of GM/WM (labels 1/2) and of the brain mask against the demo ground truth."""
    import nibabel as nb
    import numpy as np
    from nilearn.image import resample_to_img

    ours = nb.load(dseg_path)
    def on_ours(path):
        img = resample_to_img(nb.load(path), ours, interpolation="nearest", force_resample=True,
                              copy_header=True)
        return np.asarray(img.dataobj)

    labels = np.asarray(ours.dataobj)
    true = on_ours(truth["dseg"])
    result = {t: dice(labels == k, true == k) for k, t in ((1, "GM"), (2, "WM"))}
    if brain_mask is not None:
        result["brain"] = dice(np.asarray(nb.load(brain_mask).dataobj) > 0, on_ours(truth["brain"]) > 0)
    return result


# ------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--t1w", type=Path, default=DEFAULT_T1W)
    parser.add_argument("--phantom", type=Path, help="demo dataset (1 mm) to use and score against its truth")
    parser.add_argument("--subject", default="02", help="demo subject label with --phantom (default 02)")
    parser.add_argument("--template-phantom", type=int, metavar="SEED",
                        help="use the template head under a known map (1 mm, this seed) and score against its truth")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args()

    truth = None
    t1w = args.t1w
    if args.phantom:
        from bids_app.demo.build import t1w_path, truth_paths

        t1w = t1w_path(args.phantom, args.subject)
        truth = truth_paths(args.phantom / "derivatives" / "groundtruth", args.subject)
    folder = Path(tempfile.mkdtemp(prefix="morphobids-bench-"))
    try:
        if args.template_phantom is not None:
            t1w, truth = write_template_phantom(folder / "phantom", args.template_phantom)
        print(f"input: {t1w}")
        print(load_note())
        bids = make_bids(t1w, folder)
        runs = []
        for i in range(args.repeats):
            runs.append(run_morphobids(bids, folder, args.nprocs))
            print(f"  MorphoBIDS run {i + 1}: {runs[-1]['wall']:.1f} s, peak {runs[-1]['peak_gb']:.2f} GB"
                  f" ({load_note()})")
        last = runs[-1]
        steps = sorted({s for r in runs for s in r["steps"]}, key=lambda s: -statistics.median(
            r["steps"].get(s, 0) for r in runs))
        print(f"\nMorphoBIDS participant level, {args.repeats} run(s), --nprocs {args.nprocs}")
        print("| step | median s |\n|---|---|")
        for s in steps:
            print(f"| {s} | {statistics.median(r['steps'].get(s, 0) for r in runs):.1f} |")
        ours_wall = statistics.median(r["wall"] for r in runs)
        print(f"| **total wall (process start to exit)** | **{ours_wall:.1f}** |")
        print(f"peak memory (process tree): {max(r['peak_gb'] for r in runs):.2f} GB")

        anat = last["out"] / "sub-01" / "anat"
        if truth:
            acc = score(anat / "sub-01_dseg.nii.gz", truth, anat / "sub-01_desc-brain_mask.nii.gz")
            print("accuracy vs truth: " + ", ".join(f"{k} Dice {v:.3f}" for k, v in acc.items()))
        if args.no_reference:
            return
        conformed = next(last["work"].rglob("conform/conformed_T1w.nii*"))
        refs = [run_reference(conformed, anat / "sub-01_desc-brain_mask.nii.gz", folder, args.nprocs)
                for _ in range(args.repeats)]
        print(f"\nReference chain (antspyx defaults), {args.repeats} run(s), {args.nprocs} threads")
        print("| step | median s |\n|---|---|")
        for s in refs[0]["steps"]:
            print(f"| {s} | {statistics.median(r['steps'][s] for r in refs):.1f} |")
        ref_wall = statistics.median(r["wall"] for r in refs)
        print(f"| **total wall** | **{ref_wall:.1f}** |")
        print(f"peak memory (process tree): {max(r['peak_gb'] for r in refs):.2f} GB")
        if truth:
            acc = score(Path(refs[-1]["dseg"]), truth)
            print("accuracy vs truth: " + ", ".join(f"{k} Dice {v:.3f}" for k, v in acc.items()))
        print(f"\nratio MorphoBIDS / reference (median wall): {ours_wall / ref_wall:.2f}"
              " (MorphoBIDS also does conform, brain extraction, template-space maps, atlases and the report)")
        print(load_note())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
