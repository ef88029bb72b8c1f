"""Benchmark VBM permutation inference with TFCE: MorphoBIDS' engine vs nilearn's ``permuted_ols``.

Data: ``--n-subjects`` grey-matter maps at 2 mm in the MNI152NLin2009cAsym GM mask
(GM prior > ``--gm-threshold``; ~188k voxels at 0.1), made of the template GM prior
times smooth noise (FWHM 8 mm), an age effect, and a 10 % GM loss in a 10 mm sphere
of the left precentral gyrus in half of the subjects (the "patients"). Design:
intercept, group, age, sex; contrast: controls > patients.

Each engine runs in a fresh spawned process, so its peak memory is its own. Ours runs
``--n-perm`` draws on ``--threads`` threads; nilearn runs ``--nilearn-perm`` draws with
one job (and once with none, to separate its set-up), and its time is extrapolated to
the same number of draws on ``--threads`` workers assuming perfect scaling. Both use
the same seed and one chunk, so the first draws are the same: their null maxima and
the observed t/TFCE maps are compared. Usage:

    .venv/bin/python bench/tfce.py [--n-perm 5000] [--n-subjects 100] [--nilearn-perm 3] [--threads 2]

Timings on a shared machine are noisy: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEED = 0
FWHM_MM = 8.0
LESION_MNI = (-38.0, -22.0, 56.0)  # left precentral gyrus
LESION_RADIUS_MM = 10.0
LESION_LOSS = 0.10


def make_dataset(folder: Path, n_subjects: int, gm_threshold: float) -> dict:
    """Write mask, data (n x V, float32), design and the lesion's voxels to ``folder``."""
    import nibabel as nb
    import numpy as np
    from scipy import ndimage

    from bids_app.errors import ResourceError
    from bids_app.resources import get_template

    try:
        prior_img = nb.load(get_template(resolution=2, label="GM"))
        prior = prior_img.get_fdata(dtype=np.float32)
        affine, source = prior_img.affine, "MNI152NLin2009cAsym res-02 GM prior"
    except ResourceError:  # no embedded resources: a synthetic cortex-like shell of ~200k voxels
        grid = np.indices((97, 115, 97), dtype=np.float32)
        radius = np.sqrt(((grid[0] - 48) / 44) ** 2 + ((grid[1] - 57) / 52) ** 2 + ((grid[2] - 45) / 42) ** 2)
        prior = np.clip(1 - np.abs(radius - 0.8) / 0.2, 0, 1)
        affine = np.array([[-2, 0, 0, 96], [0, 2, 0, -132], [0, 0, 2, -78], [0, 0, 0, 1.0]])
        source = "synthetic shell (template not available)"
    mask = prior > gm_threshold
    rng = np.random.default_rng(SEED)
    n = n_subjects
    group = np.repeat([0.0, 1.0], [n - n // 2, n // 2])
    age = rng.normal(60, 8, n)
    sex = rng.integers(0, 2, n).astype(float)
    ijk = np.argwhere(mask)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    lesion = np.linalg.norm(world - np.array(LESION_MNI), axis=1) <= LESION_RADIUS_MM
    sigma = FWHM_MM / 2.3548 / 2.0
    gm = prior[mask]
    data = np.empty((n, len(gm)), dtype=np.float32)
    for s in range(n):
        noise = ndimage.gaussian_filter(rng.standard_normal(mask.shape, dtype=np.float32), sigma)[mask]
        values = gm * (1 + 0.12 * noise / noise.std() - 0.003 * (age[s] - 60))
        values[lesion] *= 1 - LESION_LOSS * group[s]
        data[s] = values
    np.save(folder / "mask.npy", mask)
    np.save(folder / "data.npy", data)
    np.save(folder / "design.npy", np.c_[np.ones(n), group, age, sex])
    np.save(folder / "lesion.npy", lesion)
    return {"source": source, "n_voxels": int(mask.sum()), "lesion_voxels": int(lesion.sum())}


CONTRAST = [0.0, -1.0, 0.0, 0.0]  # controls > patients


def _ours(folder: str, n_perm: int, threads: int, queue) -> None:
    import numpy as np

    from bids_app.group.permutation import permuted_ols_tfce
    from bids_app.group.tfce import VoxelGraph

    folder = Path(folder)
    mask, design = np.load(folder / "mask.npy"), np.load(folder / "design.npy")
    data = np.load(folder / "data.npy")
    graph = VoxelGraph.from_mask(mask)
    # compile or load the kernels (cached on disk after the first run) outside the timing
    permuted_ols_tfce(design, CONTRAST, data, graph, n_perm=16, n_jobs=threads)
    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    out = permuted_ols_tfce(design, CONTRAST, data, graph, n_perm=n_perm, random_state=SEED, n_jobs=threads,
                            n_chunks=1)
    wall = time.perf_counter() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    np.save(folder / "ours_t.npy", out["t"])
    np.save(folder / "ours_tfce.npy", out["tfce"])
    lesion = np.load(folder / "lesion.npy")
    hits = out["p_fwe_tfce"] < 0.05
    queue.put({"wall": wall, "cpu": cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime,
               "peak_gb": cpu1.ru_maxrss / 1024**2, "scheme": out["scheme"], "load": os.getloadavg()[0],
               "null_t": out["null_max_t"], "null_tfce": out["null_max_tfce"],
               "hits": int(hits.sum()), "hits_in_lesion": int(hits[lesion].sum()),
               "min_p_tfce": float(out["p_fwe_tfce"].min()), "min_p_t": float(out["p_fwe_t"].min())})


def _nilearn(folder: str, n_perm: int, queue) -> None:
    import warnings

    import nibabel as nb
    import numpy as np
    from nilearn.maskers import NiftiMasker
    from nilearn.mass_univariate import permuted_ols

    folder = Path(folder)
    mask, design = np.load(folder / "mask.npy"), np.load(folder / "design.npy")
    data = np.load(folder / "data.npy").astype(np.float64)
    masker = NiftiMasker(nb.Nifti1Image(mask.astype(np.uint8), np.diag([2.0, 2, 2, 1]))).fit()
    keep = np.asarray(CONTRAST) == 0
    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = permuted_ols(design @ np.asarray(CONTRAST), data, confounding_vars=design[:, keep], n_perm=n_perm,
                           two_sided_test=True, random_state=SEED, n_jobs=1, masker=masker, tfce=True)
    wall = time.perf_counter() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    if n_perm:
        np.save(folder / "nilearn_t.npy", out["t"][0])
        np.save(folder / "nilearn_tfce.npy", out["tfce"][0])
    queue.put({"wall": wall, "cpu": cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime,
               "peak_gb": cpu1.ru_maxrss / 1024**2, "load": os.getloadavg()[0],
               "null_t": out.get("h0_max_t", np.zeros((1, 0)))[0],
               "null_tfce": out.get("h0_max_tfce", np.zeros((1, 0)))[0]})


def _spawn(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _relative(a, b) -> float:
    import numpy as np

    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)) if len(b) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-perm", type=int, default=5000, help="draws for MorphoBIDS' engine")
    parser.add_argument("--n-subjects", type=int, default=100)
    parser.add_argument("--nilearn-perm", type=int, default=3, help="draws for nilearn (0: skip nilearn)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gm-threshold", type=float, default=0.1)
    args = parser.parse_args()

    import numpy as np

    with tempfile.TemporaryDirectory(prefix="bench-tfce-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        info = make_dataset(folder, args.n_subjects, args.gm_threshold)
        print(f"{args.n_subjects} subjects x {info['n_voxels']} voxels ({info['source']} > {args.gm_threshold}), "
              f"lesion {info['lesion_voxels']} voxels; data made in {time.perf_counter() - t0:.0f} s; "
              f"{args.threads} threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)

        ours = _spawn(_ours, tmp, args.n_perm, args.threads)
        per = ours["wall"] / args.n_perm
        print(f"MorphoBIDS: {args.n_perm} draws ({ours['scheme']}) in {ours['wall']:.1f} s wall, {ours['cpu']:.1f} s "
              f"CPU = {1e3 * per:.1f} ms/draw; 5000 draws: {5000 * per / 60:.1f} min; peak {ours['peak_gb']:.2f} GB "
              f"(load {ours['load']:.1f})", flush=True)
        print(f"  TFCE-FWE < 0.05: {ours['hits']} voxels, {ours['hits_in_lesion']} of {info['lesion_voxels']} in the "
              f"lesion; min p_fwe TFCE {ours['min_p_tfce']:.4f}, max-t {ours['min_p_t']:.4f}", flush=True)
        if args.nilearn_perm <= 0:
            return
        setup = _spawn(_nilearn, tmp, 0)
        ref = _spawn(_nilearn, tmp, args.nilearn_perm)
        per_ref = max(ref["wall"] - setup["wall"], 0.0) / args.nilearn_perm
        total_ref = args.n_perm * per_ref / args.threads
        print(f"nilearn: set-up {setup['wall']:.1f} s, {args.nilearn_perm} draws {ref['wall']:.1f} s -> "
              f"{per_ref:.2f} s/draw (1 job); {args.n_perm} draws on {args.threads} workers (ideal scaling): "
              f"{total_ref / 60:.1f} min; peak {ref['peak_gb']:.2f} GB (load {ref['load']:.1f})", flush=True)
        print(f"speed-up (nilearn / MorphoBIDS, same draws and workers): {total_ref / ours['wall']:.0f}x")
        k = args.nilearn_perm
        t_rel = _relative(np.load(folder / "ours_t.npy"), np.load(folder / "nilearn_t.npy"))
        tfce_rel = _relative(np.load(folder / "ours_tfce.npy"), np.load(folder / "nilearn_tfce.npy"))
        print(f"equality with nilearn (max |diff| / max |value|): t {t_rel:.1e}, TFCE {tfce_rel:.1e}, "
              f"first {k} null max-t {_relative(ours['null_t'][:k], ref['null_t']):.1e}, "
              f"null max-TFCE {_relative(ours['null_tfce'][:k], ref['null_tfce']):.1e}")


if __name__ == "__main__":
    main()
