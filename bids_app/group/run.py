"""Group level: statistics over the participants' derivatives in output_dir.

collect (tables) -> QC exclusion -> design (participants.tsv) -> ROI OLS -> VBM
(GLM + permutation FWE/TFCE) -> tables, maps, figures and the group report. Raw data
need not be present: only ``participants.tsv`` is read from bids_dir.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from bids_app.bids import derivatives as d
from bids_app.config import Settings
from bids_app.errors import EX_OK, MissingInputError

LOG = logging.getLogger("morphobids")


def _write_table(path: Path, table: pd.DataFrame, dictionary: dict | None = None) -> list[Path]:
    written = [d.write_tsv(path, table)]
    if dictionary is not None:
        written.append(d.write_json(d.sidecar_path(path), dictionary))
    return written


def modulated_gm_paths(output_dir: Path, rows: pd.DataFrame, template: str, resolution_mm: float) -> list[Path]:
    """The modulated GM map of each design row (participant_id, session_id), in row order."""
    res = d.resolution_label(resolution_mm)
    paths = []
    for _, row in rows.iterrows():
        session = row.get("session_id")
        session = None if pd.isna(session) or not session else str(session).removeprefix("ses-")
        out = d.Outputs(output_dir, str(row["participant_id"]).removeprefix("sub-"), session)
        path = out.path("std_modulated", template=template, res=res, label="GM")
        if not path.is_file():
            found = sorted(path.parent.glob(f"{out.prefix}_space-{template}_res-*_label-GM_desc-modulated_probseg.nii.gz"))
            if found:
                raise MissingInputError(
                    f"{path.name} is missing but {found[0].name} exists: the participants were processed at another "
                    "--output-resolution.",
                    f"Run the group level with --output-resolution {found[0].name.split('_res-')[1].split('_')[0]}.")
            raise MissingInputError(f"modulated GM map not found for VBM: {path}.",
                                    "Re-run the participant level for it, or use --no-vbm.")
        paths.append(path)
    return paths


def run_vbm_step(settings: Settings, design, template: str) -> tuple:
    """VBM with the design of the ROI analysis; writes maps, cluster table and summary."""
    from bids_app.group.clusters import cluster_table, table_sidecar
    from bids_app.group.vbm import run_vbm, vbm_metadata, vbm_outputs

    out = settings.output_dir
    images = modulated_gm_paths(out, design.rows, template, settings.output_resolution)
    frame = pd.DataFrame(design.matrix, columns=design.columns)
    LOG.info("VBM: %d modulated GM maps, %g mm smoothing, %d permutations%s ...", len(images),
             settings.smoothing_fwhm, settings.n_perm, " with TFCE" if settings.tfce and settings.n_perm else "")
    t0 = time.perf_counter()
    result = run_vbm(images, frame, design.contrast, smoothing_fwhm=settings.smoothing_fwhm,
                     height_control=settings.height_control, alpha=None if settings.height_control == "fpr"
                     else settings.alpha, cluster_threshold=settings.cluster_extent, two_sided=True,
                     n_perm=settings.n_perm, tfce=settings.tfce, fwe_alpha=settings.alpha,
                     permutation_backend="auto", n_jobs=settings.nprocs, random_state=settings.random_seed)
    LOG.info("VBM done in %.0f s.", time.perf_counter() - t0)
    fields = {"template": template, "res": d.resolution_label(settings.output_resolution),
              "contrast": d.label_of(design.contrast_name)}
    metadata = vbm_metadata(result)
    for name, img in vbm_outputs(result).items():
        path = d.group_path(out, "vbm_map", name=name, **fields)
        d.write_nifti(path, img)
        d.write_json(d.sidecar_path(path), {**metadata.get(name, {}), "GeneratedBy": [d.generated_by()]})
    clusters = None
    if result.threshold is not None:
        extra = {"t": result.t_img}
        if result.logp_fwe_tfce_img is not None:
            extra["logpFWE_tfce"] = result.logp_fwe_tfce_img
        clusters = cluster_table(result.thresholded_img, result.threshold, cluster_threshold=settings.cluster_extent,
                                 two_sided=True, template=template, extra_maps=extra)
        _write_table(d.group_path(out, "vbm_clusters", **fields), clusters, table_sidecar(clusters))
    d.write_json(d.group_path(out, "vbm_summary", **fields), result.summary)
    return result, clusters


def run_group_level(settings: Settings) -> int:
    from bids_app.group.collect import collect_group
    from bids_app.group.design import covariates_for
    from bids_app.group.exclusion import apply_exclusion
    from bids_app.group.figures import effect_map_svg, manhattan_svg
    from bids_app.group.roi_stats import measure_label, model_description, results_dictionary, run_roi_analysis

    out = settings.output_dir
    subjects = d.participants_with_outputs(out) if out.is_dir() else []
    if not subjects:
        raise MissingInputError(
            f"no participant-level outputs in {out}: the group level reads them.",
            "Run the participant level first: run.py bids_dir output_dir participant.",
        )
    LOG.info("found participant outputs for %d participant(s).", len(subjects))
    group = collect_group(out, settings.bids_dir if settings.bids_dir.is_dir() else None)
    warnings = list(group.warnings)
    for text in group.warnings:
        LOG.warning("%s", text)

    kept, excluded = apply_exclusion(group.morphometrics, group.qc, settings.exclude_qc, settings.exclude,
                                     settings.min_p_accept)
    if len(group.skipped):
        excluded = pd.concat([excluded, group.skipped], ignore_index=True)
    for _, row in excluded.iterrows():
        LOG.info("excluded %s%s: %s", row["participant_id"],
                 f"_{row['session_id']}" if isinstance(row.get("session_id"), str) else "", row["reason"])
    LOG.info("%d of %d scan(s) kept for the statistics.", len(kept), len(group.morphometrics))

    covariates = covariates_for(group, kept)
    warnings += covariates.warnings
    results, designs = run_roi_analysis(kept, group.rois, covariates, settings.model, settings.contrast,
                                        settings.measures, settings.roi_atlases or None, settings.alpha,
                                        settings.regions or None)
    design = designs[settings.measures[0]]
    LOG.info("model: %s; contrast %s; n = %d, df = %d.", design.formula, design.contrast_name, design.n,
             design.df_resid)

    gd = group.dictionaries
    _write_table(d.group_path(out, "morphometrics"), group.morphometrics, gd.get("morphometrics"))
    if len(group.iqms):
        _write_table(d.group_path(out, "iqms"), group.iqms, gd.get("iqms"))
    if len(group.qc):
        _write_table(d.group_path(out, "qc"), group.qc, gd.get("qc"))
    _write_table(d.group_path(out, "excluded"), excluded,
                 {"reason": {"Description": "Why the scan was left out of the statistics"}})
    _write_table(d.group_path(out, "roistats"), results,
                 {**results_dictionary(), "Model": model_description(design, settings.alpha)})

    roi_svgs = {}
    for (atlas, measure), _ in results.groupby(["atlas", "measure"]):
        label = measure_label(measure)
        manhattan = manhattan_svg(results, atlas, measure, settings.alpha)
        d.write_text(d.group_path(out, "roi_manhattan", atlas=atlas, measure=label), manhattan)
        effect = effect_map_svg(results, atlas, measure)
        d.write_text(d.group_path(out, "roi_effectmap", atlas=atlas, measure=label), effect)
        roi_svgs[(atlas, measure)] = {"manhattan": manhattan, "effectmap": effect}
    best = results.sort_values("p").head(5)
    for _, row in best.iterrows():
        LOG.info("ROI %s %s %s: t = %.2f, p = %.2g, FDR q = %.2g", row["atlas"], row["name"], row["measure"],
                 row["t"], row["p"], row["p_fdr"])

    vbm = clusters = None
    if settings.vbm:
        vbm, clusters = run_vbm_step(settings, design, settings.template)

    from bids_app.reports.group import write_group_report

    report = write_group_report(out, group=group, excluded=excluded, roi_results=results, designs=designs, vbm=vbm,
                                clusters=clusters, settings=_report_settings(settings), warnings=warnings,
                                roi_figures=roi_svgs)
    LOG.info("group report: %s", report)
    return EX_OK


def _report_settings(settings: Settings) -> dict:
    keys = ("model", "contrast", "measures", "exclude_qc", "exclude", "min_p_accept", "alpha", "smoothing_fwhm",
            "height_control", "cluster_extent", "n_perm", "tfce", "vbm", "random_seed", "template",
            "output_resolution")
    return {k: getattr(settings, k) for k in keys}
