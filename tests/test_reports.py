"""HTML reports: the participant report's QC section, the group report's sections, and both opened
in a real headless browser (Debian's ``chromium``) with the network cut off.

Inputs need no demo run. The participant report reads outputs built from the template itself
(:func:`cohort.make_participant_outputs`: the template T1w as the participant's, its brain mask,
tissue priors and their argmax as segmentation, a smooth bias field) with IQM/QC files: sub-03's
IQMs are drawn within ABIDE's distribution (the QC classifier's reference table) except an
extreme cjv, and its QC verdict fails; sub-01 has ABIDE's median IQMs and the verdict of the
project's own checks. The group report reads a copy of the tables of the synthetic cohort
(fixture ``group_cohort``: 10 controls, 10 patients with 10 % less precentral GM, two scans
failing QC), in which one failing scan gets an extreme cjv and one control a QC warning, and
the cohort's modulated GM maps for VBM.
"""

from __future__ import annotations

import dataclasses
import html as html_lib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_app.bids import derivatives as d
from bids_app.reports import qc_figures as qf

TEMPLATE = "MNI152NLin2009cAsym"
EXTREME_CJV = 0.95  # above every ABIDE scan (maximum 0.90)
WARN_REASON = "brain touches the top of the field of view"
TABLES = (".tsv", ".json")  # what the group level reads of the cohort (the maps are read where they are)


def _abide() -> dict:
    reference = qf.abide_reference()
    if not reference:
        pytest.skip("the ABIDE IQM reference table (bids_app/data/qc) is not installed")
    return reference


def _failing_qc(iqms: dict) -> dict:
    """A failing QC verdict as the participant level writes it: a cjv failure, a ghosting warning,
    a note, and the classifier's low P(accept)."""
    p_accept = 0.12
    return {"verdict": "fail", "p_accept": p_accept, "notes": ["input was not defaced"],
            "flags": [{"check": "fov", "level": "pass", "reason": "brain inside the FOV"},
                      {"check": "cjv", "level": "fail", "reason": "GM/WM contrast far below the reference scans",
                       "value": iqms["cjv"], "threshold": 0.8},
                      {"check": "ghosting", "level": "warn", "reason": "ghost-to-signal ratio 0.04 along y"}],
            "classifier": {"p_accept": p_accept, "threshold": 0.5, "rating": "exclude",
                           "model": "random forest trained on MRIQC IQM definitions", "missing_features": []}}


def _drawn_iqms(seed: int = 7) -> dict:
    """Every ABIDE IQM at a random ABIDE percentile between the 10th and 90th (interpolated in the
    shipped reference table): realistic values, none an outlier by construction; then an extreme
    cjv and cnr at the ABIDE median."""
    from bids_app.qc.classifier import REFERENCE_LEVELS

    reference = _abide()
    rng = np.random.default_rng(seed)
    iqms = {k: float(np.interp(rng.uniform(10, 90), REFERENCE_LEVELS, knots)) for k, knots in reference.items()}
    iqms["cjv"] = EXTREME_CJV
    iqms["cnr"] = float(np.interp(50, REFERENCE_LEVELS, reference["cnr"]))
    return iqms


@pytest.fixture(scope="module")
def derivatives(tmp_path_factory):
    """sub-01 (ABIDE median IQMs, the project's QC verdict) and sub-03 (failing QC), both the template."""
    from bids_app.errors import ResourceError
    from cohort import make_participant_outputs

    root = tmp_path_factory.mktemp("reports") / "derivatives"
    iqms = _drawn_iqms()
    try:
        typical = make_participant_outputs(root, "01")
        failing = make_participant_outputs(root, "03", qc=_failing_qc(iqms), iqms=iqms, seed=3)
    except ResourceError as exc:
        pytest.skip(f"embedded resources not built: {exc}")
    return root, {"01": typical, "03": failing}


@pytest.fixture(scope="module")
def participant_report(derivatives):
    from bids_app.reports.participant import write_participant_report

    root, written = derivatives
    sub = written["03"]
    path = write_participant_report(str(root), "03", None, TEMPLATE, sub["res"], str(sub["template_mask"]),
                                    {"bias": "N4"}, sub["source"])
    return Path(path), sub


@pytest.fixture(scope="module")
def cohort_tables(group_cohort, tmp_path_factory):
    """A copy of the cohort's tables in which the first failing scan has an extreme cjv (severe
    motion) and the first passing control a QC warning; returns (root, extreme, warned)."""
    root = tmp_path_factory.mktemp("group") / "derivatives"
    shutil.copytree(group_cohort["output_dir"], root,
                    ignore=lambda folder, names: [n for n in names
                                                  if not (Path(folder, n).is_dir() or n.endswith(TABLES))])
    extreme = min(group_cohort["qc_fail"])
    warned = min(set(group_cohort["controls"]) - set(group_cohort["qc_fail"]))
    path = d.Outputs(root, extreme.removeprefix("sub-")).path("iqms", contrast="T1w")
    d.write_json(path, {**json.loads(path.read_text()), "cjv": EXTREME_CJV})
    d.write_json(d.Outputs(root, warned.removeprefix("sub-")).path("qc", contrast="T1w"), {
        "verdict": "warn", "p_accept": 0.48, "flags": [{"check": "fov", "level": "warn", "reason": WARN_REASON}]})
    return root, extreme, warned


def _quality(root: Path, participant_id: str) -> tuple[dict, dict]:
    out = d.Outputs(root, participant_id.removeprefix("sub-"))
    return (json.loads(out.path("iqms", contrast="T1w").read_text()),
            json.loads(out.path("qc", contrast="T1w").read_text()))


@pytest.fixture(scope="module")
def group_inputs(group_cohort, cohort_tables):
    from bids_app.group.collect import collect_group
    from bids_app.group.design import covariates_for
    from bids_app.group.exclusion import apply_exclusion
    from bids_app.group.roi_stats import run_roi_analysis

    root = cohort_tables[0]
    group = collect_group(root, group_cohort["bids_dir"])
    kept, excluded = apply_exclusion(group.morphometrics, group.qc)
    results, designs = run_roi_analysis(kept, group.rois, covariates_for(group, kept), atlases=["AAL3"])
    return root, group, excluded, results, designs


@pytest.fixture(scope="module")
def group_report(group_cohort, group_inputs):
    from bids_app.group.clusters import cluster_table
    from bids_app.group.vbm import run_vbm
    from bids_app.reports.group import write_group_report

    root, group, excluded, results, designs = group_inputs
    design = designs["gm_ml"]
    images = [d.Outputs(group_cohort["output_dir"], p.removeprefix("sub-")).path(  # the maps, read in place
        "std_modulated", template=TEMPLATE, res=group_cohort["resolution"], label="GM")
        for p in design.rows["participant_id"]]
    # patients < controls (atrophy): the negated group contrast, one-sided, parametric only (fast)
    vbm = run_vbm(images, pd.DataFrame(design.matrix, columns=design.columns), -design.contrast, smoothing_fwhm=8,
                  n_perm=0, height_control="fpr", alpha=0.01, cluster_threshold=50)
    clusters = cluster_table(vbm.thresholded_img, vbm.threshold, extra_maps={"t": vbm.t_img})
    settings = {"alpha": 0.05, "smoothing_fwhm": 8.0, "n_perm": 0, "tfce": False, "vbm": True,
                "output_resolution": 2, "random_seed": 0, "exclude_qc": ["fail"], "model": None}
    path = write_group_report(root, group=group, excluded=excluded, roi_results=results, designs=designs, vbm=vbm,
                              clusters=clusters, settings=settings, warnings=["checked warning text"])
    return path, vbm, clusters


def _section(html: str, element_id: str) -> str:
    """The markup from the element with ``id`` to the next ``<h2``."""
    start = html.index(f'id="{element_id}"')
    end = html.find("<h2", start)
    return html[start:end if end > 0 else None]


def _text(markup: str) -> str:
    return html_lib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", markup))).strip()


def _rows(html: str, table_id: str) -> list[str]:
    """The text of each body row of the table with ``id`` (the header row left out)."""
    start = html.index(f'<table id="{table_id}"')
    table = html[start:html.index("</table>", start)]
    return [_text(row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, flags=re.DOTALL) if "<th" not in row]


# --------------------------------------------------------------------------- pure functions


def test_abide_percentile_from_the_shipped_table():
    from bids_app.qc.classifier import DATA_DIR, REFERENCE_FILE

    reference = _abide()
    table = pd.read_csv(DATA_DIR / REFERENCE_FILE, sep="\t").set_index("iqm")
    p25, p50, p95 = table.loc["cjv", ["p25", "p50", "p95"]]
    assert qf.abide_percentile("cjv", p95, reference) == pytest.approx(95.0)
    assert qf.abide_percentile("cjv", (p25 + p50) / 2, reference) == pytest.approx(37.5)  # linear between knots
    assert qf.abide_percentile("cjv", EXTREME_CJV, reference) == 100.0  # above ABIDE's maximum
    assert np.isnan(qf.abide_percentile("gsr", 0.01, reference))  # not an MRIQC IQM: no reference
    assert qf.abide_limits("cnr", (1, 99), reference) == pytest.approx(tuple(table.loc["cnr", ["p01", "p99"]]))
    rows = {r["name"]: r for r in qf.iqm_rows({"cjv": EXTREME_CJV, "cnr": float(table.loc["cnr", "p50"]),
                                                "snr_total": float(table.loc["snr_total", "p01"]), "gsr": 0.01},
                                               reference)}
    assert rows["cjv"]["flag"] == "high" and rows["cjv"]["concern"]  # high cjv is worse
    assert rows["cnr"]["flag"] is None and rows["cnr"]["percentile"] == pytest.approx(50.0)
    assert rows["snr_total"]["flag"] == "low" and rows["snr_total"]["concern"]
    assert rows["gsr"]["percentile"] is None and rows["gsr"]["flag"] is None


def test_iqm_outliers_tukey_and_abide():
    reference = _abide()
    cjv = [0.40, 0.41, 0.42, 0.43, 0.44, 0.45, 0.70]  # 0.70: beyond Q3 + 1.5 IQR of the cohort
    cnr = [3.0, 3.1, 3.2, 3.3, 3.4, 3.5, 0.2]  # 0.2: below ABIDE's 1st percentile too
    table = pd.DataFrame({"participant_id": [f"sub-{i}" for i in range(7)], "session_id": [None] * 7,
                          "cjv": cjv, "cnr": cnr})
    out = qf.iqm_outliers(table, ("cjv", "cnr"), reference)
    assert set(zip(out["participant_id"], out["iqm"], strict=True)) == {("sub-6", "cjv"), ("sub-6", "cnr")}
    cnr_rule = out.loc[out["iqm"] == "cnr", "rule"].iloc[0]
    assert "Tukey" in cnr_rule and "ABIDE's 1st percentile" in cnr_rule
    q1, q3 = np.percentile(cjv, [25, 75])
    assert qf.tukey_fences(np.array(cjv))[1] == pytest.approx(q3 + 1.5 * (q3 - q1))


def test_cohort_summary_counts():
    from bids_app.reports.group import cohort_summary, significance_marks

    table = pd.DataFrame({"participant_id": ["sub-1", "sub-2", "sub-3", "sub-4"], "group": ["a", "a", "b", "b"],
                          "age": [20, 30, 40, 60], "sex": ["F", "M", "F", "F"]})
    rows = {r["level"]: r for r in cohort_summary(table, "group")}
    assert rows["a"]["n"] == 2 and rows["a"]["age"] == f"25.0 ± {np.std([20, 30], ddof=1):.1f}"
    assert rows["b"]["sex"] == "F 2" and rows["all"]["sex"] == "F 3, M 1" and rows["all"]["n"] == 4
    assert significance_marks(0.01, 0.2, 0.05) == "FDR" and significance_marks(0.01, 0.04, 0.05) == "FDR Bonf."


# --------------------------------------------------------------------------- participant report


def test_participant_report_qc_section(participant_report):
    path, written = participant_report
    html = path.read_text(encoding="utf-8")
    qc = _section(html, "qc")
    assert html.index('id="qc"') < html.index('id="summary"')  # QC comes first
    assert '<span class="verdict fail">fail</span>' in qc
    reasons = _text(_section(html, "qc-reasons"))
    assert "GM/WM contrast far below the reference scans" in reasons and "ghost-to-signal ratio 0.04" in reasons
    assert reasons.index("cjv fail") < reasons.index("ghosting warn")  # failures listed first
    assert f"P(accept) = {written['qc']['p_accept']:.2f}" in _text(qc) and "trained on the ABIDE ratings" in qc
    # the IQM table: value, ABIDE percentile (checked against scipy), highlighted tails
    rows = {m.group(2): m for m in re.finditer(r'<tr class="([a-z]*)"><td><code>(\w+)</code></td>'
                                                r'<td class="num">([^<]+)</td>\s*<td class="num">([^<]+)</td>', qc)}
    assert rows["cjv"].group(1) == "concern" and float(rows["cjv"].group(3)) == EXTREME_CJV
    assert rows["cjv"].group(4).startswith("100.0")  # above every ABIDE scan
    assert rows["cnr"].group(1) == "" and rows["cnr"].group(4) == "50.0"  # the ABIDE median is not highlighted
    for name, row in rows.items():  # every other percentile is the reference's, to the printed digit
        expected = qf.abide_percentile(name, written["iqms"][name])
        assert row.group(4).split()[0] == ("n/a" if np.isnan(expected) else f"{expected:.1f}"), name
    assert "classifier: " not in qc and "Classifier: threshold: 0.5; rating: exclude" in _text(qc)
    assert "Notes: input was not defaced" in _text(qc)
    assert 'id="iqm-table-all"' in qc and "Provenance" not in qc  # metadata is not an IQM
    assert 'id="background"' in qc and qc.count("<svg") == 1 and "No artifact voxel" in qc


def test_participant_outputs_from_the_template(derivatives):
    """The generated outputs are the template's, named by the project, with a consistent tissue table
    (checked against the priors directly), a mean-1 bias field and the project's QC verdict."""
    import nibabel as nb

    from bids_app.qc.checks import THRESHOLDS
    from bids_app.qc.classifier import DATA_DIR, REFERENCE_FILE
    from bids_app.resources import get_template

    root, written = derivatives
    sub = written["01"]
    out = d.Outputs(root, "01")
    for kind in ("preproc_t1w", "biasfield", "head_mask", "brain_mask", "dseg", "tissue_morph"):
        assert sub["paths"][kind] == out.path(kind) and out.path(kind).is_file(), kind
    assert json.loads(d.sidecar_path(out.path("preproc_t1w")).read_text())["SkullStripped"] is False
    std = out.path("std_preproc_t1w", template=TEMPLATE, res="2")
    assert "2" in json.loads(d.sidecar_path(std).read_text())["Resolution"]
    t1w = nb.load(get_template(TEMPLATE, 2))
    assert np.array_equal(nb.load(out.path("preproc_t1w")).get_fdata(), t1w.get_fdata())
    brain = np.asanyarray(nb.load(get_template(TEMPLATE, 2, suffix="mask", desc="brain")).dataobj) > 0
    priors = np.stack([nb.load(get_template(TEMPLATE, 2, label=t)).get_fdata() for t in ("GM", "WM", "CSF")])
    tissue = pd.read_csv(out.path("tissue_morph"), sep="\t").iloc[0]
    assert tissue["tiv_ml"] == pytest.approx(brain.sum() * 8 / 1000)
    for i, name in enumerate(("gm_ml", "wm_ml", "csf_ml")):
        assert tissue[name] == pytest.approx(priors[i][brain].sum() * 8 / 1000, rel=1e-5), name
    dseg = np.asanyarray(nb.load(out.path("dseg")).dataobj)
    assert np.array_equal(dseg[brain], priors[:, brain].argmax(axis=0) + 1) and not dseg[~brain].any()
    bias = nb.load(out.path("biasfield")).get_fdata()[brain]
    assert abs(bias.mean() - 1) < 0.02 and 0.02 < bias.std() < 0.08
    head = np.asanyarray(nb.load(out.path("head_mask")).dataobj) > 0
    assert (head | ~brain).all() and 1.3 < head.sum() / brain.sum() < 3  # the head holds the brain and more
    medians = pd.read_csv(DATA_DIR / REFERENCE_FILE, sep="\t").set_index("iqm")["p50"]
    assert json.loads(out.path("iqms", contrast="T1w").read_text()) == pytest.approx(medians.to_dict())
    # the project's checks on a typical ABIDE scan at 2 mm: only the voxel size stands out
    qc = json.loads(out.path("qc", contrast="T1w").read_text())
    assert 2.0 > THRESHOLDS["voxel_mm"][0]
    assert qc["verdict"] == "warn" and [f["check"] for f in qc["flags"]] == ["voxel_size"]
    assert qc["classifier"]["rating"] == ("accept" if qc["p_accept"] >= qc["classifier"]["threshold"] else "exclude")


def test_participant_report_without_qc_files(derivatives, tmp_path):
    from bids_app.reports.participant import write_participant_report

    root, written = derivatives
    sub = written["01"]
    old = tmp_path / "old"
    shutil.copytree(root / "sub-01", old / "sub-01", ignore=shutil.ignore_patterns("*_iqm.json", "*_qc.json"))
    html = Path(write_participant_report(str(old), "01", None, TEMPLATE, sub["res"], str(sub["template_mask"]), {},
                                         sub["source"])).read_text()
    assert 'id="qc-missing"' in html and "Quality control was not computed" in html
    assert 'id="segmentation"' in html and html.count("<svg") == 4  # the other figures are still there


def test_background_figure_with_precomputed_masks(derivatives, tmp_path):
    """Precomputed air/artifact masks are drawn as given: an artifact block in the hat is counted and
    shown in red (the figure embeds it as a raster: red pixels appear only with the artifact mask)."""
    import base64
    import io

    import nibabel as nb
    from matplotlib import image
    from scipy import ndimage

    from bids_app.qc.masks import image_masks
    from bids_app.reports.participant import background_figure, raw_t1w

    root, _ = derivatives
    out = d.Outputs(root, "01")
    t1w = raw_t1w(out)
    masks = image_masks(t1w, nb.load(out.path("head_mask")), nb.load(out.path("brain_mask")))
    inner = np.argwhere(ndimage.binary_erosion(masks.hat, np.ones((7, 7, 7), bool)))
    centre = inner[len(inner) // 2]  # a 6-voxel cube of "ghost" well inside the air above the head
    artifacts = np.zeros(masks.hat.shape, bool)
    artifacts[tuple(slice(c - 3, c + 3) for c in centre)] = True
    assert artifacts.sum() == 216 and not (artifacts & ~masks.hat).any()
    paths = {}
    for name, data in (("air", masks.hat & ~artifacts), ("artifacts", artifacts)):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nb.save(nb.Nifti1Image(data.astype(np.uint8), t1w.affine), paths[name])

    def red_pixels(svg: str) -> int:
        total = 0
        for encoded in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=\s]+)", svg):  # wrapped base64
            rgb = image.imread(io.BytesIO(base64.b64decode(encoded)))[..., :3]
            total += int(((rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)).sum())
        return total

    svg, note = background_figure(out, paths)
    assert svg.startswith("<svg") and note == f"{int(artifacts.sum())} artifact voxel(s) in the background."
    clean, clean_note = background_figure(out, {"air": paths["air"], "artifacts": np.zeros_like(artifacts)})
    assert clean_note == "No artifact voxel in the background."
    assert red_pixels(svg) > 20 and red_pixels(clean) == 0


# --------------------------------------------------------------------------- group report


def test_group_report_sections(group_report, group_inputs, group_cohort, cohort_tables):
    path, vbm, clusters = group_report
    _, _, _, results, designs = group_inputs
    assert path.name == "group.html" and path.parent == group_inputs[0]
    html = path.read_text(encoding="utf-8")
    for element in ("cohort-table", "exclusion-table", "qc-flagged", "iqm-outliers", "morph-table",
                    "roi-AAL3-gm_ml", "vbm-summary", "cluster-table", "model-table", "software-table"):
        assert f'id="{element}"' in html, element
    assert "checked warning text" in html
    # cohort: the scans failing QC are excluded; group sizes and ages from participants.tsv
    participants, failed = group_cohort["participants"], sorted(group_cohort["qc_fail"])
    kept = participants[~participants["participant_id"].isin(failed)]
    cohort = _text(_section(html, "cohort-table"))
    for level, rows in kept.groupby("group"):
        assert f"{level} {len(rows)} {rows['age'].mean():.1f} ± {rows['age'].std():.1f}" in cohort, level
    assert f"all {len(kept)}" in cohort and len(kept) == len(participants) - 2
    assert {r.split()[0] for r in _rows(html, "exclusion-table")} == set(failed)
    assert "QC verdict fail" in html
    # flagged scans: the failing ones (excluded) and the warned control (kept), nothing else
    root, extreme, warned = cohort_tables
    flagged = {r.split()[0]: r for r in _rows(html, "qc-flagged")}
    assert sorted(flagged) == sorted([*failed, warned])
    for pid in failed:
        _, qc = _quality(root, pid)
        reason = qc["flags"][0]["reason"]
        assert flagged[pid] == f"{pid} fail cjv (fail): {reason} {qc['p_accept']:.2f} yes"
    assert flagged[warned] == f"{warned} warn fov (warn): {WARN_REASON} 0.48 no"
    # cjv outliers: exactly the scans beyond the cohort's upper Tukey fence (numpy), the extreme
    # one beyond ABIDE's 99th percentile too
    cjv = {pid: _quality(root, pid)[0]["cjv"] for pid in participants["participant_id"]}
    q1, q3 = np.percentile(list(cjv.values()), [25, 75])
    above = sorted(p for p, v in cjv.items() if v > q3 + 1.5 * (q3 - q1))
    assert set(failed) <= set(above)  # the failing scans' contrast stands out
    outliers = {r.split()[0]: r for r in _rows(html, "iqm-outliers") if r.split()[1] == "cjv"}
    assert sorted(outliers) == above
    assert outliers[extreme].startswith(f"{extreme} cjv 0.95 above the cohort's Tukey fence")
    assert "ABIDE's 99th percentile" in outliers[extreme]
    # ROI: the table lists the family's smallest p values in order, with the design's model
    family = results[(results["atlas"] == "AAL3") & (results["measure"] == "gm_ml")].sort_values("p")
    roi = _section(html, "roi-AAL3-gm_ml")
    names = re.findall(r'<td class="num">\d+</td><td>([^<]+)</td>', roi)
    assert names == family["name"].head(len(names)).tolist() and len(names) == 15
    assert sorted(names[:2]) == ["Precentral_L", "Precentral_R"]  # the simulated atrophy
    assert roi.count("<svg") == 2 and designs["gm_ml"].formula in roi
    # VBM: summary, figures, clusters (peak in the precentral gyrus, as simulated)
    vbm_text = _text(_section(html, "vbm"))
    assert f"Suprathreshold voxels {vbm.summary['n_suprathreshold_voxels']}" in vbm_text
    assert "Smoothing 8 mm FWHM" in vbm_text and "none (parametric inference only)" in vbm_text
    peaks = clusters[clusters["peak"].astype(bool)]
    assert peaks.sort_values("size_voxels")["AAL3"].iloc[-1].startswith("Precentral")  # the largest cluster
    table = _section(html, "cluster-table")
    shown = re.findall(r"<tr><td>(\w+)</td><td>(True|False)</td>", table)
    assert shown == [(str(c), str(p)) for c, p in clusters[["cluster_id", "peak"]].head(len(shown)).to_numpy()]
    assert len(shown) == min(len(clusters), 25) and all(label in table for label in peaks["AAL3"].head(5))
    model = _text(_section(html, "model"))
    design = designs["gm_ml"]
    assert f"gm_ml {design.formula}" in model and f" {design.n} {design.df_resid} " in model
    import nilearn
    import statsmodels

    assert f"nilearn {nilearn.__version__}" in model and f"statsmodels {statsmodels.__version__}" in model


def test_group_report_reuses_roi_figures(group_inputs):
    from bids_app.reports.group import roi_section

    _, _, _, results, designs = group_inputs
    given = {("AAL3", "gm_ml"): {"manhattan": '<svg id="m"></svg>', "effectmap": '<svg id="e"></svg>'}}
    family = roi_section(results, designs, 0.05, 2, figures=given)["families"][0]
    assert (family["manhattan"], family["effect"]) == ('<svg id="m"></svg>', '<svg id="e"></svg>')
    assert family["n_tested"] == int(results["p"].notna().sum()) and len(family["rows"]) == 15


def test_group_report_without_qc_roi_or_vbm(group_inputs, tmp_path):
    from bids_app.reports.group import write_group_report

    _, group, _, _, _ = group_inputs
    empty = dataclasses.replace(group, iqms=group.iqms.iloc[0:0], qc=group.qc.iloc[0:0])
    path = write_group_report(tmp_path, group=empty, excluded=None, roi_results=None, designs={}, vbm=None,
                              clusters=None, settings={"vbm": False}, warnings=[])
    html = path.read_text(encoding="utf-8")
    for element in ("qc-missing", "roi-missing", "vbm-missing", "cohort-table", "morph-table"):
        assert f'id="{element}"' in html, element
    n = len(group.morphometrics)
    assert "VBM was disabled (--no-vbm)" in html and f"all {n}" in _text(_section(html, "cohort-table")) and n == 20


# --------------------------------------------------------------------------- real browser

#: Hosts the browser contacts by itself (clock, component updates, accounts), not the page.
BROWSER_HOSTS = {"clients2.google.com", "update.googleapis.com", "accounts.google.com", "www.google.com",
                 "redirector.gvt1.com", "optimizationguide-pa.googleapis.com"}
REQUEST = re.compile(r"NotifyBeforeURLRequest: (\S+)")
EXTERNAL = re.compile(r"""(?:\b(?:src|href|srcset|poster|data|action)\s*=\s*["']?\s*"""
                      r"""|url\(\s*["']?\s*|@import\s+["']?)(?:https?:)?//""", re.IGNORECASE)


def _host(url: str) -> str:
    return re.sub(r"^[a-z]+://([^/:?]+).*$", r"\1", url)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("MORPHOBIDS_REQUIRE_BROWSER") == "1":
        pytest.fail("chromium is required (MORPHOBIDS_REQUIRE_BROWSER=1) but not installed: apt-get install chromium")
    pytest.skip("chromium is not installed (apt-get install chromium); set MORPHOBIDS_REQUIRE_BROWSER=1 to require it")


def _open(page: Path, work: Path) -> dict:
    """Load ``page`` in headless chromium with every host name unresolvable: DOM, screenshot, requests."""
    shot = work / f"{page.stem}.png"
    command = [_chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
               "--disable-background-networking", f"--user-data-dir={work / 'profile'}",
               "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--vmodule=network_delegate=1",
               "--window-size=1280,2000", f"--screenshot={shot}", "--dump-dom", page.resolve().as_uri()]
    run = subprocess.run(command, capture_output=True, text=True, timeout=90, env={**os.environ, "HOME": str(work)})
    requests = REQUEST.findall(run.stderr)
    return {"rc": run.returncode, "dom": run.stdout, "shot": shot, "requests": requests, "stderr": run.stderr,
            "hosts": {_host(url) for url in requests}}


def _pixels(path: Path) -> np.ndarray:
    from matplotlib import image

    rgb = image.imread(str(path))[..., :3].astype(float)
    return rgb if rgb.max() <= 1.0 else rgb / 255.0


@pytest.fixture(scope="module")
def browser_control(tmp_path_factory):
    """A page loading an external image and stylesheet: the request log must show both (the check works)."""
    work = tmp_path_factory.mktemp("browser")
    page = work / "control.html"
    page.write_text('<!DOCTYPE html><html><body><h1>control</h1><img src="http://example.invalid/x.png">'
                    '<link rel="stylesheet" href="https://cdn.example.invalid/a.css"></body></html>')
    result = _open(page, work)
    assert result["rc"] == 0, result["stderr"][-2000:]
    assert {"example.invalid", "cdn.example.invalid"} <= result["hosts"], result["requests"]
    assert EXTERNAL.search(result["dom"])
    gray = _pixels(result["shot"]).mean(axis=2)
    return {"browser_hosts": result["hosts"] - {"example.invalid", "cdn.example.invalid"},
            "variance": float(gray.var()), "non_white": float((gray < 0.9).mean())}


@pytest.mark.parametrize("which", ["participant", "group"])
def test_reports_in_headless_browser(which, browser_control, participant_report, group_report, tmp_path):
    page = participant_report[0] if which == "participant" else group_report[0]
    result = _open(page, tmp_path)
    assert result["rc"] == 0, result["stderr"][-2000:]
    dom = result["dom"]
    assert "</html>" in dom and ('id="model"' if which == "group" else 'id="methods"') in dom
    # participant: background, segmentation (2), normalization, bias; group: IQMs, morphometrics,
    # Manhattan, effect map, VBM glass brain and slices
    assert dom.count("<svg") == (5 if which == "participant" else 6)
    assert not EXTERNAL.search(dom), EXTERNAL.search(dom)
    browser_hosts = BROWSER_HOSTS | browser_control["browser_hosts"]
    page_requests = [url for url in result["requests"] if _host(url) not in browser_hosts]
    assert page_requests == []
    pixels = _pixels(result["shot"])
    assert pixels.shape[:2] == (2000, 1280)
    gray = pixels.mean(axis=2)
    # not blank: far more contrast and ink than the control page (one heading, a broken image)
    assert gray.var() > max(0.005, 10 * browser_control["variance"])
    assert (gray < 0.9).mean() > max(0.03, 10 * browser_control["non_white"])
    if which == "participant":  # the red "fail" badge (#c62828) is drawn near the top
        red = (np.abs(pixels[:400] - np.array([0xc6, 0x28, 0x28]) / 255).max(axis=2) < 0.06)
        assert red.sum() > 200
    print(json.dumps({"report": which, "screenshot": list(pixels.shape), "variance": round(float(gray.var()), 4),
                      "non_white": round(float((gray < 0.9).mean()), 3), "dom_chars": len(dom),
                      "control_variance": round(browser_control["variance"], 5),
                      "control_non_white": round(browser_control["non_white"], 4)}))
