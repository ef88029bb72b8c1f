"""Benchmark normalization to MNI152NLin2009cAsym on a 1 mm head: MorphoBIDS' schedule vs antspyx's default SyN.

The head is the 1 mm phantom of ``tests/test_register.py`` (the template brain under
a known pose and smooth deformation, with bias and noise), so accuracy has exact
truth: AAL3 Dice over large ROIs (labels brought to the subject by the inverse
transform) and the mean target registration error (TRE) of brain points. Each run
happens in a fresh process (spawned), so its peak memory is its own. Usage:

    .venv/bin/python bench/registration.py [--repeats 3] [--default-repeats 1] [--threads 2]

Timings on a shared machine are noisy: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _evaluate(native_img, truth, source_world, inverse: list[str], invert: list[bool]) -> tuple[float, float]:
    """(mean Dice over large AAL3 ROIs, mean TRE in mm) for a template -> T1w transform list."""
    import ants
    import numpy as np
    import pandas as pd

    from bids_app.participant.antsio import to_ants
    from bids_app.resources import get_atlas
    from test_register import roi_dice

    atlas = ants.image_read(str(get_atlas("AAL3").dseg))
    found = ants.apply_transforms(to_ants(native_img), atlas, inverse, interpolator="genericLabel",
                                  whichtoinvert=invert).numpy()
    voxel_ml = float(np.prod(native_img.header.get_zooms()[:3])) / 1000.0
    dice = float(np.mean(list(roi_dice(truth, np.rint(found).astype(int), voxel_ml).values())))
    ijk = np.argwhere(np.asarray(native_img.dataobj) > 0)
    ijk = ijk[np.random.default_rng(0).choice(len(ijk), 20000, replace=False)]
    points = ijk @ native_img.affine[:3, :3].T + native_img.affine[:3, 3]
    frame = pd.DataFrame({"x": -points[:, 0], "y": -points[:, 1], "z": points[:, 2]})
    mapped = ants.apply_transforms_to_points(3, frame, inverse, whichtoinvert=invert)
    mapped = np.c_[-mapped["x"], -mapped["y"], mapped["z"]]
    truth_points = source_world[:, ijk[:, 0], ijk[:, 1], ijk[:, 2]].T
    return dice, float(np.linalg.norm(mapped - truth_points, axis=1).mean())


def _run(method: str, folder: str, threads: int, queue) -> None:
    """Child process: one registration, timed, then evaluated against the phantom's truth."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    import ants
    import nibabel as nb
    import numpy as np

    from bids_app.participant.antsio import to_ants
    from bids_app.participant.register import register_to_template
    from bids_app.resources import get_template

    folder = Path(folder)
    image = nb.load(folder / "T1w.nii.gz")
    image = nb.Nifti1Image(image.get_fdata(dtype=np.float32), image.affine)
    template = get_template("MNI152NLin2009cAsym", 1, "T1w", desc="brain")
    out = tempfile.mkdtemp(dir=folder)
    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    if method == "morphobids":
        reg = register_to_template(image, template, Path(out), nthreads=threads, seed=1)
        inverse, invert = [str(reg.to_native)], [False]
    else:
        reg = ants.registration(ants.image_read(str(template)), to_ants(image), "SyN", outprefix=out + "/")
        inverse, invert = reg["invtransforms"], [True, False]
    wall = time.perf_counter() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime
    peak_gb = cpu1.ru_maxrss / 1024**2
    truth = np.asarray(nb.load(folder / "labels.nii.gz").dataobj)
    dice, tre = _evaluate(image, truth, np.load(folder / "source_world.npy"), inverse, invert)
    queue.put({"wall": wall, "cpu": cpu, "peak_gb": peak_gb, "dice": dice, "tre": tre, "load": os.getloadavg()[0]})


def measure(method: str, folder: Path, threads: int, repeats: int) -> list[dict]:
    """``repeats`` runs of ``method``, each in a fresh spawned process."""
    ctx = mp.get_context("spawn")
    results = []
    for _ in range(repeats):
        queue = ctx.Queue()
        proc = ctx.Process(target=_run, args=(method, str(folder), threads, queue))
        proc.start()
        results.append(queue.get())
        proc.join()
    return results


def summary(name: str, runs: list[dict]) -> dict:
    """Median of each figure over the runs."""
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    walls = ", ".join(f"{r['wall']:.1f}" for r in runs)
    print(f"{name:<26} wall {med['wall']:6.1f} s  cpu {med['cpu']:6.1f} s  peak {med['peak_gb']:.2f} GB  "
          f"AAL3 Dice(large ROIs) {med['dice']:.3f}  TRE {med['tre']:.2f} mm  (load {med['load']:.1f}; n={len(runs)}; "
          f"walls {walls})", flush=True)
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of the MorphoBIDS schedule")
    parser.add_argument("--default-repeats", type=int, default=1, help="runs of antspyx's default SyN (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="phantom seed")
    args = parser.parse_args()

    import nibabel as nb
    import numpy as np
    from test_register import make_phantom

    with tempfile.TemporaryDirectory(prefix="bench-registration-") as tmp:
        folder = Path(tmp)
        phantom = make_phantom(1.0, seed=args.seed)
        nb.save(phantom.image, folder / "T1w.nii.gz")
        nb.save(phantom.labels, folder / "labels.nii.gz")
        np.save(folder / "source_world.npy", phantom.source_world)
        print(f"1 mm phantom {phantom.image.shape}, {args.threads} threads, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        ours = summary("MorphoBIDS (2 mm, GC+CC)", measure("morphobids", folder, args.threads, args.repeats))
        if args.default_repeats > 0:
            ref = summary("antspyx SyN defaults 1 mm", measure("default", folder, args.threads, args.default_repeats))
            print(f"ratio (MorphoBIDS / antspyx defaults): wall {ours['wall'] / ref['wall']:.2f}, "
                  f"cpu {ours['cpu'] / ref['cpu']:.2f}, peak memory {ours['peak_gb'] / ref['peak_gb']:.2f}")


if __name__ == "__main__":
    main()
