"""Brain-mask agreement: how much of the phantoms' brain-mask Dice is the extractor's convention.

A brain mask's outer edge runs through the CSF between the gyral crowns and the skull, and
each source draws it at its own depth. This scores both extraction methods of
:mod:`bids_app.participant.skullstrip` - deepbet (the default) and the template-based antspyx
fallback - against the brain mask that comes with each head, on the undistorted heads and on
the template-head phantoms (:mod:`bids_app.demo.template_phantom`: pose, smooth deformation,
bias and Rician noise at 1 mm):

- the MNI152NLin2009cAsym head, against the template's own brain mask;
- ROBEX's reference head (the demo patient's source, 1.5 mm), against ROBEX's reference mask;
- template-head phantoms, against the template's mask carried through the known map.

If deepbet scores the same on a phantom as on the undistorted template, the phantom's
deformation, bias and noise cost nothing, and what remains is where deepbet and the mask's
authors put the brain's outer edge. The template-based fallback is scored for comparison.
On the template head and its phantoms it draws the truth's own mask (carried by a
registration to the same template), so it scores high there by construction. With
``--real T1W ...`` it is also scored against deepbet's mask of real heads that come without
a reference mask (e.g. ds000011 sub-01, sub-08, sub-12).

    .venv/bin/python bench/brain_mask.py [--seeds 3 4 5] [--nprocs 2] [--no-template-method]
                                         [--real T1W [T1W ...]]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nb
import numpy as np

from bids_app.participant import skullstrip
from bids_app.participant.conform import conform
from bids_app.resources import get_template

TEMPLATE = "MNI152NLin2009cAsym"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def score(name: str, image: nb.Nifti1Image, truth: np.ndarray, nprocs: int, template_method: bool,
          deepbet: bool = True) -> None:
    """Print Dice and volumes of each method's mask of ``image`` against ``truth`` (same grid)."""
    voxel_ml = float(np.prod(image.header.get_zooms()[:3])) / 1000
    methods = {"deepbet": lambda: skullstrip.deepbet_mask(image, nthreads=nprocs)} if deepbet else {}
    if template_method:
        methods["template"] = lambda: skullstrip.template_mask(image, get_template(TEMPLATE, 1, "T1w"),
                                                              get_template(TEMPLATE, 1, "mask", desc="brain"))
    for method, run in methods.items():
        t0 = time.perf_counter()
        mask = np.asanyarray(run().dataobj) > 0
        took = time.perf_counter() - t0
        extra, missed = (mask & ~truth).sum() * voxel_ml, (truth & ~mask).sum() * voxel_ml
        print(f"{name:<28} {method:<9} {dice(mask, truth):6.4f} {mask.sum() * voxel_ml:7.0f} "
              f"{truth.sum() * voxel_ml:7.0f} {extra:6.0f} {missed:6.0f} {took:6.1f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[3, 4, 5], help="template-phantom seeds")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--no-template-method", action="store_true", help="score deepbet only")
    parser.add_argument("--real", type=Path, nargs="*", default=[], metavar="T1W",
                        help="real T1w images: the template method is scored against deepbet's mask")
    args = parser.parse_args(argv)
    from bids_app.demo.sources import load_source_head
    from bids_app.demo.template_phantom import make_template_phantom

    template_method = not args.no_template_method
    print(f"{'head':<28} {'method':<9} {'Dice':>6} {'mask mL':>7} {'truth':>7} {'extra':>6} {'missed':>6} "
          f"{'s':>6}")
    head = nb.load(get_template(TEMPLATE, 1, "T1w"))
    truth = np.asanyarray(nb.load(get_template(TEMPLATE, 1, "mask", desc="brain")).dataobj) > 0
    score(f"{TEMPLATE} head", head, truth, args.nprocs, template_method)
    robex = load_source_head()
    score("ROBEX reference head", nb.Nifti1Image(robex.image, robex.affine), robex.brain_mask, args.nprocs,
          template_method)
    for seed in args.seeds:
        phantom = make_template_phantom(1.0, seed=seed, head=True)
        truth = np.asanyarray(phantom.brain_mask.dataobj) > 0
        score(f"template phantom, seed {seed}", phantom.image, truth, args.nprocs, template_method)
    for path in args.real:
        img, _ = conform(nb.load(path))
        truth = np.asanyarray(skullstrip.deepbet_mask(img, nthreads=args.nprocs).dataobj) > 0
        score(f"{path.name} vs deepbet", img, truth, args.nprocs, True, deepbet=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
