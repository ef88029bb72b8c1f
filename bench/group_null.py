"""False-positive rate of the group statistics on null cohorts (real scans, random labels).

Reads the participant-level derivatives of a real dataset (e.g. ds000011 processed with
``run.py ... participant``), then repeats: draw a random balanced two-group labelling,
test it (model ``intercept + group``) with

- ROI statistics: OLS per AAL3 region on GM volume, Bonferroni and FDR over regions;
- VBM: smoothed modulated GM in the mean-GM mask, permutation max-t and TFCE FWE
  (``bids_app.group.permutation``, the engine the group level uses);

and counts the repetitions with any corrected finding at alpha 0.05. With a valid
procedure each rate is at most 5 % (up to Monte-Carlo error: the 95 % binomial
interval is printed). The images are loaded and smoothed once; ``--downsample`` 2
takes every other voxel after smoothing (4 mm from 2 mm maps), to run many
repetitions quickly - the FWE logic does not depend on the grid.

    .venv/bin/python bench/group_null.py OUTPUT_DIR [--repeats 100] [--n-perm 500]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bids_app.bids import derivatives as d
from bids_app.group.collect import collect_group
from bids_app.group.permutation import permuted_ols_tfce
from bids_app.group.roi_stats import correct_pvalues
from bids_app.group.vbm import load_images, smooth

TEMPLATE = "MNI152NLin2009cAsym"


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--n-perm", type=int, default=500)
    parser.add_argument("--fwhm", type=float, default=8.0)
    parser.add_argument("--downsample", type=int, default=2)
    parser.add_argument("--res", default="2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-jobs", type=int, default=2)
    args = parser.parse_args()

    group = collect_group(args.output_dir)
    table = group.morphometrics
    n = len(table)
    rois = group.rois[(group.rois["atlas"] == "AAL3") & (group.rois["measure"] == "gm_ml")]
    y_roi = table[list(rois["column"])].to_numpy(float)
    y_roi = y_roi[:, np.nanstd(y_roi, axis=0) > 0]  # regions absent in every scan cannot be tested
    images = []
    for _, row in table.iterrows():
        ses = row.get("session_id")
        ses = None if not isinstance(ses, str) or not ses else ses.removeprefix("ses-")
        out = d.Outputs(args.output_dir, row["participant_id"].removeprefix("sub-"), ses)
        images.append(out.path("std_modulated", template=TEMPLATE, res=args.res, label="GM"))
    t0 = time.perf_counter()
    stack, affine, _ = load_images(images)
    mask = stack.mean(axis=3) >= 0.2
    smooth(stack, affine, args.fwhm)
    step = args.downsample
    stack, mask = stack[::step, ::step, ::step], mask[::step, ::step, ::step]
    data = stack[mask].T.astype(np.float64)  # (n, V)
    print(f"{n} participants, {mask.sum()} voxels ({step}x downsampled), {rois.shape[0]} AAL3 regions; "
          f"loaded in {time.perf_counter() - t0:.1f} s; load average {os.getloadavg()[0]:.1f}")

    rng = np.random.default_rng(args.seed)
    hits = {"ROI Bonferroni": 0, "ROI FDR": 0, "VBM max-t FWE": 0, "VBM TFCE FWE": 0}
    t0 = time.perf_counter()
    for rep in range(args.repeats):
        labels = np.zeros(n)
        labels[rng.permutation(n)[: n // 2]] = 1
        design = np.column_stack([np.ones(n), labels])
        # ROI OLS: two-sample t of every region
        _, p = stats.ttest_ind(y_roi[labels == 1], y_roi[labels == 0], axis=0)
        p_fdr, p_bonf = correct_pvalues(p, 0.05)
        hits["ROI Bonferroni"] += bool((p_bonf < 0.05).any())
        hits["ROI FDR"] += bool((p_fdr < 0.05).any())
        res = permuted_ols_tfce(design, np.array([0.0, 1.0]), data, mask, n_perm=args.n_perm, two_sided=True,
                                random_state=int(rng.integers(2**31)), n_jobs=args.n_jobs, scheme="permute")
        hits["VBM max-t FWE"] += bool((res["p_fwe_t"] < 0.05).any())
        hits["VBM TFCE FWE"] += bool((res["p_fwe_tfce"] < 0.05).any())
    took = time.perf_counter() - t0
    print(f"\n{args.repeats} null cohorts (random balanced labels), {args.n_perm} permutations each, "
          f"{took:.0f} s ({took / args.repeats:.1f} s per cohort)")
    print("| procedure | cohorts with a finding | rate | 95 % interval |\n|---|---|---|---|")
    for name, k in hits.items():
        lo, hi = wilson(k, args.repeats)
        print(f"| {name} | {k} / {args.repeats} | {k / args.repeats:.3f} | {lo:.3f}-{hi:.3f} |")


if __name__ == "__main__":
    main()
