"""Accuracy of the participant level on a 1 mm demo patient and its atrophy-free baseline.

The phantom pair of ``tests/test_accuracy.py``: a demo patient (``bids_app.demo``, seed 0, 1 mm;
precentral grey matter shrunk by ~10 %) and the same patient rendered without atrophy (label
``99``: same deformation, bias and noise). Scores against the ground truth: brain-mask Dice, GM
and WM Dice of the hard labels (dseg), and the precentral GM loss measured by the AAL3 ROI
``gm_ml`` of the patient against the baseline, next to the realised truth (``groundtruth.json``).
Our outputs are on the conformed (RAS) grid; the truth is resampled onto it (nearest neighbour;
linear for the truth's GM maps).

The precentral loss is also split into its two sources, each against the truth's own figure:
``AAL3 ROIs, truth GM`` is the loss the true GM maps give inside the same native AAL3 ROIs
(what the atlas-ROI measure can report with these registrations and a perfect segmentation),
``true labels, our GM`` is the loss our GM maps give inside the true precentral labels (the
segmentation alone; the truth's ``in label`` figure is its target).

    .venv/bin/python bench/accuracy.py build [--root /tmp/acc]     # dataset + participant level (once)
    .venv/bin/python bench/accuracy.py score [--root /tmp/acc] [--out DIR]
    .venv/bin/python bench/accuracy.py resegment [--root /tmp/acc]   # segment.py again on the cached
                                                                      # work-dir inputs, then score

    .venv/bin/python bench/accuracy.py truths [--root /tmp/acc]      # ours and the reference chain
                                                                      # against two constructions of the truth

``truths`` asks how much the GM/WM comparison with the reference chain (antspyx N4, SyN,
Atropos with priors; ``bench/participant.py``) depends on how the phantom's tissue truth was
made. The stored truth is Atropos with template priors carried by antspyx SyN (Mattes MI), the
reference chain's own recipe; the second truth is Atropos without priors (k-means start, same
MRF) on the same N4-corrected head, rendered through the same map, atrophy and grid.

``resegment`` reruns only the tissue segmentation (bids_app.participant.segment.segment, its
current defaults) on the work dir's N4-corrected T1w, brain mask and warped priors, and scores
its labels and maps with the native AAL3 labels of the same run: the quick loop for tuning.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
from nilearn.image import resample_to_img

from bids_app.bids import derivatives as d
from bids_app.demo.build import GROUNDTRUTH, make_dataset, truth_paths

BASELINE = "99"
SIDES = ("Precentral_L", "Precentral_R")


# ------------------------------------------------------------------------ the phantom pair


def build(root: Path, nprocs: int = 2) -> None:
    """Write the dataset, the baseline subject and its truth under ``root``; run the participant level."""
    from bids_app.cli import main
    from bids_app.demo import truth as demo_truth

    bids = root / "bids"
    if not bids.exists():
        make_dataset(bids, n_subjects=2, seed=0, resolution=1, cache=True, log=print)
        demo_truth.add_baseline_subject(bids, patient_label(bids), BASELINE, root / "baseline_truth")
    t0 = time.perf_counter()
    code = main([str(bids), str(root / "out"), "participant", "-w", str(root / "work"), "--skip_bids_validator",
                 "--nprocs", str(nprocs), "--participant_label", patient_label(bids), BASELINE])
    print(f"participant level: exit {code} in {time.perf_counter() - t0:.0f} s")


def patient_label(bids: Path) -> str:
    summary = json.loads((bids / GROUNDTRUTH / "groundtruth.json").read_text())
    return next(s["participant_id"][4:] for s in summary["participants"] if s["group"] == "patient")


def true_loss(bids: Path) -> dict[str, float]:
    """Realised precentral GM loss of the patient (region GM and GM inside the hard labels)."""
    summary = json.loads((bids / GROUNDTRUTH / "groundtruth.json").read_text())
    return summary["atrophy"]["patients"][f"sub-{patient_label(bids)}"]


def truth_files(root: Path, label: str) -> dict[str, Path]:
    """Truth maps of ``label`` (brain, dseg, GM, precentral) on the raw grid."""
    if label == BASELINE:
        return {k: root / "baseline_truth" / f"{k}.nii.gz" for k in ("brain", "dseg", "GM", "precentral")}
    return truth_paths(root / "bids" / GROUNDTRUTH, label)


# ------------------------------------------------------------------------ scoring


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def on_grid(path: Path, reference: nb.Nifti1Image) -> np.ndarray:
    """``path`` resampled (nearest) onto ``reference``'s grid, as the accuracy test does."""
    img = resample_to_img(nb.load(path), reference, interpolation="nearest", force_resample=True, copy_header=True)
    return np.asarray(img.dataobj)


def label_scores(root: Path, label: str, dseg_img: nb.Nifti1Image, brain: np.ndarray) -> dict[str, float]:
    """Brain, GM and WM Dice of our mask and labels against the truth."""
    files = truth_files(root, label)
    truth_brain, truth_dseg = on_grid(files["brain"], dseg_img) > 0, on_grid(files["dseg"], dseg_img)
    dseg = np.asarray(dseg_img.dataobj)
    return {"brain": dice(brain, truth_brain), "GM": dice(dseg == 1, truth_dseg == 1),
            "WM": dice(dseg == 2, truth_dseg == 2),
            "brain_ml": float(brain.sum()) * float(np.prod(dseg_img.header.get_zooms()[:3])) / 1000,
            "truth_brain_ml": float(truth_brain.sum()) * float(np.prod(dseg_img.header.get_zooms()[:3])) / 1000}


def precentral_gm_ml(atlas: nb.Nifti1Image, gm: np.ndarray) -> pd.Series:
    """GM volume (mL) of ``gm`` inside the native AAL3 Precentral_L/R labels of ``atlas``."""
    from bids_app.resources import get_atlas

    labels = get_atlas("AAL3").labels_table().set_index("name")["index"]
    data = np.rint(np.asarray(atlas.dataobj)).astype(int)
    vox = float(abs(np.linalg.det(atlas.affine[:3, :3]))) / 1000
    return pd.Series({side: float(gm[data == labels[side]].sum()) * vox for side in SIDES})


def precentral_sources(root: Path, label: str, gm: nb.Nifti1Image, atlas: nb.Nifti1Image) -> pd.DataFrame:
    """Precentral GM (mL) of ``label`` by the four (map, region) pairs; rows: :data:`SIDES`."""
    files = truth_files(root, label)
    gm_data = np.asarray(gm.dataobj, dtype=np.float32)
    resampled = resample_to_img(nb.load(files["GM"]), gm, interpolation="continuous", force_resample=True,
                                copy_header=True)
    truth_gm = np.clip(np.asarray(resampled.dataobj, dtype=np.float32), 0, 1)
    true_labels = on_grid(files["precentral"], gm)
    vox = float(abs(np.linalg.det(gm.affine[:3, :3]))) / 1000
    in_true = {side: true_labels == k for k, side in enumerate(SIDES, start=1)}
    return pd.DataFrame({
        "AAL3 ROIs, our GM": precentral_gm_ml(atlas, gm_data),
        "AAL3 ROIs, truth GM": precentral_gm_ml(atlas, truth_gm),
        "true labels, our GM": pd.Series({s: float(gm_data[m].sum()) * vox for s, m in in_true.items()}),
        "true labels, truth GM": pd.Series({s: float(truth_gm[m].sum()) * vox for s, m in in_true.items()}),
    })


def print_table(rows: dict[str, dict], sources: dict[str, pd.DataFrame], truth: dict[str, float],
                patient: str) -> pd.DataFrame:
    """Print the Dice table and the precentral losses; return the losses (sides x measures)."""
    print(f"{'subject':<10} {'brain':>6} {'GM':>6} {'WM':>6}   mask mL (truth)")
    for label, s in rows.items():
        print(f"sub-{label:<6} {s['brain']:6.3f} {s['GM']:6.3f} {s['WM']:6.3f}   {s['brain_ml']:.0f} "
              f"({s['truth_brain_ml']:.0f})")
    loss = 1 - sources[patient] / sources[BASELINE]
    print("precentral GM loss, patient vs baseline (the pipeline reports 'AAL3 ROIs, our GM'):")
    print(f"  {'':<14}" + "".join(f"{c:>24}" for c in loss.columns) + f"{'truth (in label)':>24}")
    for side in SIDES:
        print(f"  {side:<14}" + "".join(f"{v:>24.1%}" for v in loss.loc[side])
              + f"{truth[side]:>15.1%} ({truth[side + '_in_label']:.1%})")
    return loss


def score_outputs(root: Path, out: Path) -> None:
    """The table from a finished output folder."""
    bids = root / "bids"
    patient = patient_label(bids)
    rows, sources, tissue = {}, {}, {}
    for label in (patient, BASELINE):
        o = d.Outputs(out, label)
        dseg_img = nb.load(o.path("dseg"))
        brain = np.asarray(nb.load(o.path("brain_mask")).dataobj) > 0
        rows[label] = label_scores(root, label, dseg_img, brain)
        sources[label] = precentral_sources(root, label, nb.load(o.path("probseg", label="GM")),
                                            nb.load(o.path("atlas_dseg", atlas="AAL3")))
        reported = pd.read_csv(o.path("atlas_morph", atlas="AAL3"), sep="\t").set_index("name").loc[list(SIDES), "gm_ml"]
        assert np.allclose(reported, sources[label]["AAL3 ROIs, our GM"], rtol=1e-3), (reported, sources[label])
        tissue[label] = pd.read_csv(o.path("tissue_morph"), sep="\t").iloc[0]
    print_table(rows, sources, true_loss(bids), patient)
    print_volumes(root, {label: t[["gm_ml", "wm_ml", "csf_ml"]].to_numpy() for label, t in tissue.items()}, patient)
    print(f"TIV patient/baseline - 1: {tissue[patient]['tiv_ml'] / tissue[BASELINE]['tiv_ml'] - 1:+.2%}")


def print_volumes(root: Path, volumes: dict[str, np.ndarray], patient: str) -> None:
    """Our GM/WM/CSF volumes (mL) next to the truth's (the patient's groundtruth.json)."""
    summary = json.loads((root / "bids" / GROUNDTRUTH / "groundtruth.json").read_text())
    truth = next(p["volumes_ml"] for p in summary["participants"] if p["participant_id"] == f"sub-{patient}")
    print("tissue volumes mL, ours (truth, patient): " + ", ".join(
        f"{t} {volumes[patient][k]:.0f} ({truth[t]:.0f})" for k, t in enumerate(("GM", "WM", "CSF"))))


# ------------------------------------------------------------------------ re-segmenting


def work_inputs(root: Path, label: str) -> dict[str, Path]:
    wf = root / "work" / "morphobids_wf" / f"sub_{label}_wf"
    return {"t1w": wf / "bias" / "corrected_T1w.nii", "mask": wf / "skullstrip" / "brain_mask.nii.gz",
            "priors": [wf / "priors" / f"prior_{t}.nii" for t in ("GM", "WM", "CSF")],
            "atlas": wf / "atlases" / "atlas_AAL3.nii.gz"}


def resegment(root: Path, settings=None, mask_fn=None, quiet: bool = False) -> dict:
    """Segment the cached work-dir inputs again (``segment.segment``) and score; returns the figures.

    ``mask_fn(t1w_img, mask_img) -> mask_img`` may replace the brain mask first.
    """
    from bids_app.participant.segment import DEFAULT_SETTINGS, segment

    bids = root / "bids"
    patient = patient_label(bids)
    rows, sources, seconds, volumes = {}, {}, {}, {}
    for label in (patient, BASELINE):
        files = work_inputs(root, label)
        t1w, mask = nb.load(files["t1w"]), nb.load(files["mask"])
        if mask_fn is not None:
            mask = mask_fn(t1w, mask)
        priors = {t: nb.load(p) for t, p in zip(("GM", "WM", "CSF"), files["priors"])}
        t0 = time.perf_counter()
        probseg, dseg = segment(t1w, mask, priors, settings=settings or DEFAULT_SETTINGS)
        seconds[label] = time.perf_counter() - t0
        rows[label] = label_scores(root, label, dseg, np.asarray(mask.dataobj) > 0)
        sources[label] = precentral_sources(root, label, probseg["GM"], nb.load(files["atlas"]))
        vox = float(abs(np.linalg.det(t1w.affine[:3, :3]))) / 1000
        volumes[label] = np.array([float(np.asarray(probseg[t].dataobj).sum()) * vox for t in ("GM", "WM", "CSF")])
    if quiet:
        loss = 1 - sources[patient] / sources[BASELINE]
    else:
        loss = print_table(rows, sources, true_loss(bids), patient)
        print_volumes(root, volumes, patient)
        print("segmentation time: " + ", ".join(f"sub-{k} {v:.1f} s" for k, v in seconds.items()))
    return {"rows": rows, "loss": loss, "seconds": seconds, "volumes": volumes}


# ------------------------------------------------------------------------ two truths


def prior_free_dseg(root: Path, label: str) -> nb.Nifti1Image:
    """``label``'s hard truth labels with the head's tissue maps from Atropos without priors."""
    import dataclasses

    import ants

    from bids_app.demo import phantom
    from bids_app.demo.build import draw_participants, subject_specs
    from bids_app.demo.head import HeadTruth, _to_ants
    from bids_app.participant.antsio import private_tempdir

    folder = root / "bids" / GROUNDTRUTH / "head"
    truth = HeadTruth.load(folder)
    summary = json.loads((root / "bids" / GROUNDTRUTH / "groundtruth.json").read_text())
    seed, n_subjects, res = (summary["generator"][k] for k in ("seed", "n_subjects", "resolution"))
    mask = _to_ants(truth.brain_mask.astype(np.float32), truth.affine)
    corrected = ants.n4_bias_field_correction(_to_ants(truth.t1w * truth.brain_mask, truth.affine), mask=mask,
                                              shrink_factor=4)
    with private_tempdir():
        seg = ants.atropos(a=corrected, x=mask, i="Kmeans[3]", m="[0.1,1x1x1]", c="[5,0]")
    csf, gm, wm = (p.numpy().astype(np.float32) * truth.brain_mask for p in seg["probabilityimages"])  # dark->bright
    free = dataclasses.replace(truth, gm=gm, wm=wm, csf=csf)
    spec = next(s for s in subject_specs(draw_participants(n_subjects, seed), truth, seed) if s.label == label)
    atrophy = phantom.cached_atrophy_field(truth, folder)[0]
    arrays, _ = phantom.render_subject(spec, free, phantom.subject_grid(truth, res), atrophy)
    stored = nb.load(truth_files(root, label)["dseg"])
    return nb.Nifti1Image(arrays["dseg"], stored.affine)


def truths(root: Path, nprocs: int) -> None:
    """Ours and the reference chain on the patient, against the stored and the prior-free truth."""
    sys.path.insert(0, str(Path(__file__).parent))
    from participant import run_reference

    label = patient_label(root / "bids")
    anat = d.Outputs(root / "out", label)
    conformed = next((root / "work" / "morphobids_wf" / f"sub_{label}_wf" / "conform").glob("conformed_T1w.nii*"))
    folder = root / "reference"
    folder.mkdir(exist_ok=True)
    ref = nb.load(run_reference(conformed, anat.path("brain_mask"), folder, nprocs)["dseg"])
    ours = nb.load(anat.path("dseg"))
    free = root / "prior_free_dseg.nii.gz"
    nb.save(prior_free_dseg(root, label), free)
    print(f"sub-{label}, Dice of the hard labels      ours GM   WM    reference GM   WM")
    for name, path in (("stored truth (priors via MI SyN)", truth_files(root, label)["dseg"]),
                       ("prior-free truth", free)):
        row = []
        for img in (ours, ref):
            labels, true = np.asarray(img.dataobj), on_grid(path, img)
            row += [dice(labels == 1, true == 1), dice(labels == 2, true == 2)]
        print(f"{name:<36} {row[0]:6.3f} {row[1]:6.3f}       {row[2]:6.3f} {row[3]:6.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["build", "score", "resegment", "truths"])
    parser.add_argument("--root", type=Path, default=Path("/tmp/acc"))
    parser.add_argument("--out", type=Path, help="output folder to score (default: <root>/out)")
    parser.add_argument("--nprocs", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if args.action == "build":
        build(args.root, args.nprocs)
        score_outputs(args.root, args.root / "out")
    elif args.action == "score":
        score_outputs(args.root, args.out or args.root / "out")
    elif args.action == "truths":
        truths(args.root, args.nprocs)
    else:
        resegment(args.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
