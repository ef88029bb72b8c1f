"""Benchmark the QC step (bids_app.qc): time per subject and detection of controlled degradations.

For each real 1 mm scan (default: ds000011 sub-01..03, 160x192x192 at 1 x 1.33 x 1.33 mm,
defaced), the participant chain runs once and is cached in ``--work``: conform, head mask, N4
(``bias.n4`` defaults), deepbet, ``register.register_to_template`` (rigid/affine/SyN), template
tissue priors and brain mask carried to native space, EM segmentation.

``timing``: ``compute_iqms`` + ``fov_metrics`` + ``build_context`` + ``run_checks`` + writing the
JSON, from the files on disk, per subject (the first subject pays the imports: shown apart).

``detection``: each degradation of :mod:`bids_app.qc.corrupt` at three severities. The head
mask is recomputed on the degraded image (a threshold: cheap, and it must see the ghosts);
the bias field too, by N4 with the pipeline's schedule, for ``bias``; the brain mask,
segmentation and template maps of the untouched scan are reused (cut to the new grid for the
crops, which is what carrying them through the registration would give). The template
coverage of a crop is the fraction of the template brain (in native space, on the uncut grid)
left inside the cut field of view. Prints a markdown table: per degradation and severity, in
how many scans the expected check fired, the verdicts, and the key metric per scan.

    .venv/bin/python bench/qc.py [--subjects 01 02 03] [--work /tmp/morphobids-bench-qc] [--skip-detection]

The machine's load is printed with the timings: on a shared box they are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nb
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bids_app.qc import corrupt  # noqa: E402
from bids_app.qc.checks import build_context, fov_metrics, fwhm_mm, run_checks  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
TEMPLATE = "MNI152NLin2009cAsym"
TISSUES = ("GM", "WM", "CSF")

#: degradation -> (severities, function(scan, severity) -> image, expected checks, key metric, unit)
SEVERITIES = {
    "noise": (0.03, 0.06, 0.12),  # Rician SD, fraction of the WM mean
    "bias": (0.6, 1.2, 1.8),  # field max/min over the head: 1.86, 4.0, 19
    "blur": (2.0, 3.0, 4.5),  # Gaussian FWHM, mm
    "ghosting": (0.05, 0.10, 0.20),  # amplitude of the N/2 ghost (A-P)
    "motion_ringing": (0.05, 0.15, 0.30),  # fraction of k-space lines displaced by 4 mm
    "crop_vertex": (5.0, 10.0, 20.0),  # mm of brain cut at the top
    "crop_cerebellum": (10.0, 20.0, 30.0),  # mm cut above the lowest brain-mask slice
}
EXPECTED = {
    "noise": {"noise", "tissue_contrast", "contrast_to_noise"},
    # N4 with the pipeline's schedule corrects fields of strength 0.6 and 1.2 (ds000011 sub-01..03
    # then pass: cjv 0.29-0.44); at 1.8 part of the field stays and widens the tissue intensity
    # distributions, which cjv measures (0.83-0.92; a proxy of non-uniformity, Ganzetti 2016)
    "bias": {"intensity_nonuniformity", "tissue_contrast", "contrast_to_noise", "noise"},
    "blur": {"blurring"},
    "ghosting": {"ghosting", "artifacts_in_background"},
    "motion_ringing": {"ghosting", "tissue_contrast", "artifacts_in_background", "contrast_to_noise"},
    "crop_vertex": {"top_of_brain_cut"},
    "crop_cerebellum": {"cerebellum_cut"},
}
KEY_METRIC = {"noise": "snr_wm", "bias": "cjv", "blur": "fwhm_mm", "ghosting": "gsr", "motion_ringing": "gsr",
              "crop_vertex": "border_superior", "crop_cerebellum": "template_coverage"}


def load_note() -> str:
    return "load average {:.2f} {:.2f} {:.2f} on {} CPUs".format(*os.getloadavg(), os.cpu_count())


def loaded(img: nb.Nifti1Image) -> nb.Nifti1Image:
    return nb.Nifti1Image(np.asanyarray(img.dataobj).astype(np.float32), img.affine)


# ------------------------------------------------------------------------------ the chain


def prepare(t1w_path: Path, folder: Path) -> dict[str, Path]:
    """Run the participant chain once; returns the paths of its outputs (cached in ``folder``)."""
    from bids_app.participant.bias import head_mask, n4
    from bids_app.participant.conform import conform
    from bids_app.participant.register import register_to_template, to_native
    from bids_app.participant.segment import segment
    from bids_app.participant.skullstrip import deepbet_mask
    from bids_app.resources import get_template

    names = ["t1w", "head", "bias", "corrected", "brain", "dseg", "template_brain", *TISSUES,
             *(f"tpm_{t}" for t in TISSUES)]
    paths = {n: folder / f"{n}.nii.gz" for n in names}
    done = folder / "similarity.json"
    if done.exists() and all(p.exists() for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    t1w, _ = conform(nb.load(t1w_path))
    head = head_mask(t1w)
    corrected, bias = n4(t1w, head)
    brain = deepbet_mask(corrected, nthreads=2)
    masked = nb.Nifti1Image(corrected.get_fdata(dtype=np.float32) * (brain.get_fdata() > 0), t1w.affine)
    reg = register_to_template(masked, get_template(TEMPLATE, 1, "T1w", desc="brain"), folder / "xfm", nthreads=2)
    priors = {t: loaded(to_native(get_template(TEMPLATE, 1, "probseg", label=t), reg, corrected)) for t in TISSUES}
    template_brain = to_native(get_template(TEMPLATE, 1, "mask", desc="brain"), reg, corrected)
    probseg, dseg = segment(corrected, brain, priors)
    images = {"t1w": t1w, "head": head, "bias": bias, "corrected": corrected, "brain": brain, "dseg": dseg,
              "template_brain": template_brain, **probseg, **{f"tpm_{t}": p for t, p in priors.items()}}
    for name, img in images.items():
        nb.save(img, paths[name])
    done.write_text(json.dumps({"similarity": reg.similarity}))
    print(f"  prepared {t1w_path.name} in {time.perf_counter() - t0:.0f} s ({load_note()})", flush=True)
    return paths


def qc(paths: dict[str, Path], similarity: float, coverage: float | None = None, pe_direction: str | None = None,
       out_json: Path | None = None) -> tuple[dict, dict, dict]:
    """IQMs, FOV metrics and checks of one scan from its files; optionally writes the JSON."""
    from bids_app.qc.iqms import compute_iqms

    iqms = compute_iqms(paths["t1w"], paths["head"], paths["brain"], {t: paths[t] for t in TISSUES}, paths["dseg"],
                        paths["bias"], {t: paths[f"tpm_{t}"] for t in TISSUES},
                        inu_corrected_path=paths.get("corrected"), pe_direction=pe_direction)
    fov = fov_metrics(paths["brain"], paths["template_brain"])
    ctx = build_context(nb.load(paths["t1w"]), nb.load(paths["head"]), nb.load(paths["brain"]),
                        registration_similarity=similarity, template_coverage=coverage, fov=fov)
    result = run_checks(iqms, ctx)
    if out_json is not None:
        out_json.write_text(json.dumps({"iqms": iqms, "context": ctx.as_dict(), **result}, indent=1))
    return iqms, fov, result


# ------------------------------------------------------------------------------ timing


def bench_timing(scans: dict[str, dict], work: Path) -> dict[str, dict]:
    """Prints the timing table; returns each untouched scan's verdict and flags."""
    untouched = {}
    print(f"\n## IQMs + checks per subject (1 mm ds000011), {load_note()}\n")
    print("| subject | wall s | CPU s | verdict | flags | notes |")
    print("|---|---|---|---|---|---|")
    for i, (name, scan) in enumerate(scans.items()):
        t, c = time.perf_counter(), time.process_time()
        _, _, result = qc(scan["paths"], scan["similarity"], out_json=work / f"{name}_qc.json")
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        note = " (first: imports)" if i == 0 else ""
        flags = "; ".join(f"{f['check']}={f['level']}" for f in result["flags"]) or "-"
        notes = "defaced" if any("defaced" in n for n in result["notes"]) else "-"
        untouched[name] = {"verdict": result["verdict"], "others": sorted(f["check"] for f in result["flags"])}
        print(f"| {name}{note} | {wall:.1f} | {cpu:.1f} | {result['verdict']} | {flags} | {notes} |", flush=True)
    name, scan = next(iter(scans.items()))
    t, c = time.perf_counter(), time.process_time()
    qc(scan["paths"], scan["similarity"])
    print(f"| {name} (again, warm) | {time.perf_counter() - t:.1f} | {time.process_time() - c:.1f} | | | |")
    print(f"\n({load_note()})")
    return untouched


# ------------------------------------------------------------------------------ detection


def degrade(name: str, level: float, t1w: nb.Nifti1Image, paths: dict[str, Path]) -> nb.Nifti1Image:
    if name == "noise":
        wm = nb.load(paths["WM"])
        return corrupt.add_noise(t1w, level, seed=1, wm_mask=nb.Nifti1Image((wm.get_fdata() > 0.9).astype(np.uint8),
                                                                             wm.affine))
    if name == "bias":
        return corrupt.add_bias(t1w, level, seed=2)
    if name == "blur":
        return corrupt.blur(t1w, level)
    if name == "ghosting":
        return corrupt.ghosting(t1w, level, seed=1, axis=1)
    if name == "motion_ringing":
        return corrupt.motion_ringing(t1w, level, seed=1)
    brain = nb.load(paths["brain"])
    return getattr(corrupt, name)(t1w, level, brain)


def degraded_case(name: str, level: float, scan: dict, folder: Path) -> tuple[dict, dict, dict, float | None]:
    """QC of one degraded scan (see the module docstring for what is recomputed); returns
    (iqms, fov metrics, check result, template coverage or None)."""
    from bids_app.participant.bias import head_mask, n4

    paths = scan["paths"]
    t1w = loaded(nb.load(paths["t1w"]))
    img = degrade(name, level, t1w, paths)
    folder.mkdir(parents=True, exist_ok=True)
    case = {"t1w": folder / "t1w.nii"}
    nb.save(img, case["t1w"])
    cut = img.shape != t1w.shape
    for key in ("brain", "dseg", "template_brain", *TISSUES, *(f"tpm_{t}" for t in TISSUES), "bias"):
        src = nb.load(paths[key])
        case[key] = folder / f"{key}.nii"
        nb.save(corrupt.crop_like(src, img) if cut else src, case[key])
    head = head_mask(img)
    case["head"] = folder / "head.nii"
    nb.save(head, case["head"])
    if name == "bias":
        _, field = n4(img, head)
        nb.save(field, case["bias"])
    coverage = None
    if cut:
        template = nb.load(paths["template_brain"])
        kept = corrupt.crop_like(template, img).get_fdata() > 0.5
        coverage = float(kept.sum() / (template.get_fdata() > 0.5).sum())
    return (*qc(case, scan["similarity"], coverage=coverage), coverage)


def key_value(name: str, iqms: dict, fov: dict, coverage: float | None) -> float:
    metric = KEY_METRIC[name]
    if metric == "fwhm_mm":
        return fwhm_mm(iqms)
    if metric == "border_superior":
        return fov["border_superior"]
    if metric == "template_coverage":
        return coverage if coverage is not None else 1.0
    return iqms[metric]


def bench_detection(scans: dict[str, dict], work: Path, untouched: dict[str, dict], which: list[str]) -> None:
    names = list(scans)
    rows = [("none", 0.0, [([], untouched[n]["verdict"], float("nan"), untouched[n]["others"]) for n in names])]
    for name in which:
        for level in SEVERITIES[name]:
            cells = []
            for subject, scan in scans.items():
                with tempfile.TemporaryDirectory(dir=work) as tmp:
                    iqms, fov, result, coverage = degraded_case(name, level, scan, Path(tmp))
                checks = {f["check"] for f in result["flags"]}
                hit = sorted(EXPECTED[name] & checks)
                extra = "" if name != "bias" else f" (inu_range {iqms['inu_range']:.3f})"
                cells.append((hit, result["verdict"], key_value(name, iqms, fov, coverage), sorted(checks - set(hit)),
                              extra))
            rows.append((name, level, cells))
            print(f"  {name} {level}: " + ", ".join(f"{c[1]} {c[2]:.4g}{c[4]}" for c in cells), flush=True)
    print(f"\n## Detection of controlled degradations ({', '.join(names)}), {load_note()}\n")
    header = ("| degradation | severity | expected flag raised | other flags | verdicts | key metric | "
              + " | ".join(names) + " |")
    print(header)
    print("|" + "---|" * (6 + len(names)))
    for name, level, cells in rows:
        raised = sum(bool(c[0]) for c in cells)
        which = sorted({h for c in cells for h in c[0]})
        others = sorted({o for c in cells for o in c[3]})
        verdicts = ", ".join(c[1] for c in cells)
        values = " | ".join("-" if not np.isfinite(c[2]) else f"{c[2]:.4g}{c[4] if len(c) > 4 else ''}" for c in cells)
        expected = "-" if name == "none" else f"{raised}/{len(cells)}" + (f" ({', '.join(which)})" if which else "")
        print(f"| {name} | {level:g} | {expected} | {', '.join(others) or '-'} | {verdicts} | "
              f"{KEY_METRIC.get(name, '-')} | {values} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", nargs="+", default=["01", "02", "03"])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "morphobids-bench-qc")
    parser.add_argument("--skip-detection", action="store_true")
    parser.add_argument("--degradations", nargs="+", choices=sorted(SEVERITIES), help="only these (default: all)")
    parser.add_argument("--clean", action="store_true", help="remove the cached chain outputs first")
    args = parser.parse_args(argv)
    if args.clean and args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    scans = {}
    print(f"preparing {len(args.subjects)} scans in {args.work} ({load_note()})", flush=True)
    for label in args.subjects:
        path = DATA / "ds000011" / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz"
        if not path.exists():
            print(f"missing {path}: see shared/data/README.md", file=sys.stderr)
            return 66
        paths = prepare(path, args.work / f"sub-{label}")
        similarity = json.loads((args.work / f"sub-{label}" / "similarity.json").read_text())["similarity"]
        scans[f"sub-{label}"] = {"paths": paths, "similarity": similarity}
    untouched = bench_timing(scans, args.work)
    if not args.skip_detection:
        bench_detection(scans, args.work, untouched, args.degradations or list(SEVERITIES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
