"""The participant workflow: steps wired as nipype nodes (sMRIPrep-style ``init_*_wf`` factories).

::

    conform -> detect_prestripped -> bias (N4) ----+-> register (rigid/affine/SyN)
                                  '-> skullstrip --'      |-> priors -> segment -> trim_mask -> morphometry
                                                          |-> atlases -----------------------^
                                                          '-> template_space (+ modulation)

N4 and brain extraction both start from the conformed T1w and run side by side. Registration
and segmentation use the extracted brain mask; ``trim_mask`` then removes the outer CSF beyond
the template's brain edge, and every later step and output uses the trimmed mask. The
report's processing figures are drawn (``figures``) while QC runs; ``report`` adds the QC
figures and writes the page once the sink has written the derivatives.

Every node runs in its own folder under ``<work_dir>/morphobids_wf``; nipype reuses
a node's result when its inputs are unchanged, so a rerun after a crash resumes.
The sink writes the derivatives only once all steps of a participant succeeded.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nipype import Function, Node, Workflow
from nipype import config as nipype_config

from bids_app.bids.derivatives import resolution_label
from bids_app.bids.layout import SessionInputs
from bids_app.config import Settings
from bids_app.participant import nodes
from bids_app.participant.intracranial import METHOD as ICV_METHOD
from bids_app.participant.segment import METHOD as SEGMENTATION_METHOD

LOG = logging.getLogger("morphobids")
SEED = 1
METHODS = {
    "bias": "N4 (antspyx n4_bias_field_correction) in a head mask, 4 levels 40/30/20/10 iterations, ~6 mm working grid",
    "segmentation": SEGMENTATION_METHOD,
    "registration": "antspyx rigid -> affine -> SyN to the template brain",
    "intracranial": ICV_METHOD,
}


def _fn(func, inputs, outputs, name, mem_gb=1.0, n_procs=1) -> Node:
    node = Node(Function(function=func, input_names=inputs, output_names=outputs), name=name,
                mem_gb=mem_gb, n_procs=n_procs)
    return node


def sink_node(output_dir, bids_dir, subject, session, source_t1w, params, prestripped, conform_json, preproc,
              biasfield, head_mask, brain_mask, skullstrip_method, dseg, probseg, to_template, to_native,
              similarity, std, atlases, icv_mask, tissue_tsv, atlas_tsv, iqm_json, qc_json, thickness=None):
    """Write the derivatives of one participant/session (last node)."""
    from bids_app.participant.outputs import write_participant_outputs

    work = dict(prestripped=prestripped, conform_json=conform_json, preproc=preproc, biasfield=biasfield,
                head_mask=head_mask, brain_mask=brain_mask, skullstrip_method=skullstrip_method, dseg=dseg,
                probseg=probseg, to_template=to_template, to_native=to_native, similarity=similarity, std=std,
                atlases=atlases, icv_mask=icv_mask, tissue_tsv=tissue_tsv, atlas_tsv=atlas_tsv, iqm_json=iqm_json, qc_json=qc_json,
                thickness=thickness)
    return write_participant_outputs(output_dir, bids_dir, subject, session, source_t1w, work, params)


def figures_node(preproc, brain_mask, dseg, std, template_mask, biasfield, icv_mask=None):
    """The report's processing figures (SVG text in a JSON file), drawn from the work files
    while QC runs; the report node adds the QC figures and writes the page."""
    import json
    import os

    from bids_app.reports.participant import processing_figures

    svgs = processing_figures(preproc, brain_mask, dseg, std["preproc_t1w"], template_mask, biasfield, icv_mask)
    path = os.path.abspath("figures.json")
    with open(path, "w") as fh:
        json.dump(svgs, fh)
    return path


def report_node(written, output_dir, subject, session, template, res_label, template_mask, methods, source,
                figures=None):
    """The participant's HTML report, from the derivatives the sink wrote (and the drawn figures)."""
    import json

    from bids_app.reports.participant import write_participant_report

    svgs = None
    if figures:
        with open(figures) as fh:
            svgs = json.load(fh)
    return write_participant_report(output_dir, subject, session, template, res_label, template_mask, methods,
                                    source, svgs=svgs)


def session_wf_name(inputs: SessionInputs) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", inputs.key) + "_wf"


def init_session_wf(inputs: SessionInputs, settings: Settings, resources: dict) -> Workflow:
    """Workflow for one participant/session; ``resources`` maps names to template files."""
    wf = Workflow(name=session_wf_name(inputs))
    threads = settings.omp_nthreads
    res = int(settings.output_resolution)
    priors = [str(resources[f"{t}-res1"]) for t in ("GM", "WM", "CSF")]

    conform = _fn(nodes.conform_node, ["in_file", "affine_source"], ["out_file", "info_json"], "conform", 0.5)
    conform.inputs.in_file = str(inputs.t1w)
    conform.inputs.affine_source = inputs.affine_source
    detect = _fn(nodes.detect_prestripped_node, ["in_file", "mode"], ["prestripped"], "detect_prestripped", 0.5)
    detect.inputs.mode = settings.skull_strip
    bias = _fn(nodes.bias_node, ["in_file", "prestripped"], ["corrected", "biasfield", "head_mask"], "bias", 1.0)
    strip = _fn(nodes.skullstrip_node, ["in_file", "prestripped", "mode", "template_t1w", "template_mask", "nthreads"],
                ["brain_mask", "method"], "skullstrip", 1.5)
    strip.inputs.mode = settings.skull_strip
    strip.inputs.template_t1w = str(resources["T1w-res1"])
    strip.inputs.template_mask = str(resources["mask-res1"])
    strip.inputs.nthreads = threads
    register = _fn(nodes.register_node, ["in_file", "brain_mask", "template_brain", "nthreads", "seed"],
                   ["to_template", "to_native", "similarity"], "register", 2.0, threads)
    register.inputs.template_brain = str(resources["brain-res1"])
    register.inputs.nthreads = threads
    register.inputs.seed = SEED
    warp_priors = _fn(nodes.priors_node, ["reference", "to_template", "to_native", "template_priors"], ["priors"],
                      "priors", 1.0)
    warp_priors.inputs.template_priors = priors
    segment = _fn(nodes.segment_node, ["in_file", "brain_mask", "priors", "nthreads"], ["probseg", "dseg"],
                  "segment", 2.0)  # one slot: the EM is single-threaded
    segment.inputs.nthreads = threads
    trim = _fn(nodes.trim_mask_node, ["brain_mask", "method", "prestripped", "probseg", "dseg", "to_template",
                                      "to_native", "template_mask"], ["brain_mask", "method", "probseg", "dseg"],
               "trim_mask", 1.0)
    trim.inputs.template_mask = str(resources["mask-res1"])
    std = _fn(nodes.template_space_node, ["preproc", "brain_mask", "probseg", "to_template", "to_native",
                                          "reference"], ["std"], "template_space", 1.5)
    std.inputs.reference = str(resources[f"T1w-res{res}"])
    atlases = _fn(nodes.atlas_node, ["reference", "to_template", "to_native", "atlas_names", "template"],
                  ["atlases"], "atlases", 1.0)
    atlases.inputs.atlas_names = list(settings.atlases)
    atlases.inputs.template = settings.template
    morph = _fn(nodes.morphometry_node, ["t1w", "brain_mask", "probseg", "extraction_mask", "extraction_probseg",
                                         "atlases", "template", "prestripped", "to_template", "to_native",
                                         "template_head", "thickness"],
                ["icv_mask", "tissue_tsv", "atlas_tsv"], "morphometry", 1.0)
    morph.inputs.template = settings.template
    morph.inputs.template_head = {"T1w": str(resources["T1w-res1"]), "mask": str(resources["mask-res1"]),
                                  "GM": priors[0], "CSF": priors[2]}
    qc = _fn(nodes.qc_node, ["t1w", "corrected", "head_mask", "brain_mask", "probseg", "dseg", "biasfield", "priors",
                             "to_template", "to_native", "similarity", "template_mask", "prestripped", "conform_json",
                             "source"], ["iqm_json", "qc_json"], "qc", 1.5)
    qc.inputs.template_mask = str(resources[f"mask-res{res}"])
    qc.inputs.source = str(inputs.t1w)
    sink_inputs = ["output_dir", "bids_dir", "subject", "session", "source_t1w", "params", "prestripped",
                   "conform_json", "preproc", "biasfield", "head_mask", "brain_mask", "skullstrip_method", "dseg",
                   "probseg", "to_template", "to_native", "similarity", "std", "atlases", "icv_mask", "tissue_tsv",
                   "atlas_tsv",
                   "iqm_json", "qc_json", "thickness"]
    sink = _fn(sink_node, sink_inputs, ["written"], "sink", 0.5)
    sink.overwrite = True  # always (re)write: the output folder may have changed since the last run
    sink.inputs.output_dir = str(settings.output_dir)
    sink.inputs.bids_dir = str(settings.bids_dir)
    sink.inputs.subject = inputs.subject
    sink.inputs.session = inputs.session
    sink.inputs.source_t1w = str(inputs.t1w)
    sink.inputs.params = {"template": settings.template, "output_resolution": settings.output_resolution, **METHODS}
    if settings.cortical_thickness:
        from bids_app.participant.thickness import METHOD as THICKNESS_METHOD

        sink.inputs.params["thickness"] = THICKNESS_METHOD
        thickness = _fn(nodes.thickness_node, ["dseg", "probseg", "nthreads"], ["thickness"], "thickness", 2.0,
                        threads)
        thickness.inputs.nthreads = threads
        wf.connect([(trim, thickness, [("dseg", "dseg"), ("probseg", "probseg")]),
                    (thickness, morph, [("thickness", "thickness")]),
                    (thickness, sink, [("thickness", "thickness")])])

    figures = _fn(figures_node, ["preproc", "brain_mask", "dseg", "std", "template_mask", "biasfield", "icv_mask"],
                  ["figures"], "figures", 1.0)
    figures.inputs.template_mask = str(resources[f"mask-res{res}"])
    report = _fn(report_node, ["written", "output_dir", "subject", "session", "template", "res_label",
                               "template_mask", "methods", "source", "figures"], ["report"], "report", 1.0)
    report.overwrite = True
    report.inputs.output_dir = str(settings.output_dir)
    report.inputs.subject = inputs.subject
    report.inputs.session = inputs.session
    report.inputs.template = settings.template
    report.inputs.res_label = resolution_label(settings.output_resolution)
    report.inputs.template_mask = str(resources[f"mask-res{res}"])
    report.inputs.methods = METHODS
    report.inputs.source = str(inputs.t1w)

    wf.connect([
        (sink, report, [("written", "written")]),
        (bias, figures, [("corrected", "preproc"), ("biasfield", "biasfield")]),
        (trim, figures, [("brain_mask", "brain_mask"), ("dseg", "dseg")]),
        (morph, figures, [("icv_mask", "icv_mask")]),
        (std, figures, [("std", "std")]),
        (figures, report, [("figures", "figures")]),
        (conform, detect, [("out_file", "in_file")]),
        (conform, bias, [("out_file", "in_file")]),
        (detect, bias, [("prestripped", "prestripped")]),
        (conform, strip, [("out_file", "in_file")]),
        (detect, strip, [("prestripped", "prestripped")]),
        (bias, register, [("corrected", "in_file")]),
        (strip, register, [("brain_mask", "brain_mask")]),
        (bias, warp_priors, [("corrected", "reference")]),
        (register, warp_priors, [("to_template", "to_template"), ("to_native", "to_native")]),
        (bias, segment, [("corrected", "in_file")]),
        (strip, segment, [("brain_mask", "brain_mask")]),
        (warp_priors, segment, [("priors", "priors")]),
        (strip, trim, [("brain_mask", "brain_mask"), ("method", "method")]),
        (detect, trim, [("prestripped", "prestripped")]),
        (segment, trim, [("probseg", "probseg"), ("dseg", "dseg")]),
        (register, trim, [("to_template", "to_template"), ("to_native", "to_native")]),
        (bias, std, [("corrected", "preproc")]),
        (trim, std, [("brain_mask", "brain_mask"), ("probseg", "probseg")]),
        (register, std, [("to_template", "to_template"), ("to_native", "to_native")]),
        (bias, atlases, [("corrected", "reference")]),
        (register, atlases, [("to_template", "to_template"), ("to_native", "to_native")]),
        (bias, morph, [("corrected", "t1w")]),
        (detect, morph, [("prestripped", "prestripped")]),
        (trim, morph, [("brain_mask", "brain_mask"), ("probseg", "probseg")]),
        (strip, morph, [("brain_mask", "extraction_mask")]),
        (segment, morph, [("probseg", "extraction_probseg")]),
        (atlases, morph, [("atlases", "atlases")]),
        (register, morph, [("to_template", "to_template"), ("to_native", "to_native")]),
        (detect, sink, [("prestripped", "prestripped")]),
        (conform, sink, [("info_json", "conform_json")]),
        (bias, sink, [("corrected", "preproc"), ("biasfield", "biasfield"), ("head_mask", "head_mask")]),
        (trim, sink, [("brain_mask", "brain_mask"), ("method", "skullstrip_method"), ("dseg", "dseg"),
                      ("probseg", "probseg")]),
        (register, sink, [("to_template", "to_template"), ("to_native", "to_native"), ("similarity", "similarity")]),
        (std, sink, [("std", "std")]),
        (atlases, sink, [("atlases", "atlases")]),
        (morph, sink, [("icv_mask", "icv_mask"), ("tissue_tsv", "tissue_tsv"), ("atlas_tsv", "atlas_tsv")]),
        (conform, qc, [("out_file", "t1w"), ("info_json", "conform_json")]),
        (bias, qc, [("corrected", "corrected"), ("head_mask", "head_mask"), ("biasfield", "biasfield")]),
        (trim, qc, [("brain_mask", "brain_mask"), ("probseg", "probseg"), ("dseg", "dseg")]),
        (warp_priors, qc, [("priors", "priors")]),
        (register, qc, [("to_template", "to_template"), ("to_native", "to_native"), ("similarity", "similarity")]),
        (detect, qc, [("prestripped", "prestripped")]),
        (qc, sink, [("iqm_json", "iqm_json"), ("qc_json", "qc_json")]),
    ])
    return wf


@dataclass
class Progress:
    """nipype status callback: per-step progress and timings per participant.

    On a terminal each participant gets a progress bar (steps done / steps, the step
    running now); otherwise, and with ``--verbose``, one log line per step start and end.
    """

    totals: dict = field(default_factory=dict)
    tty: bool = False
    started: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    failed: dict = field(default_factory=dict)
    bars: dict = field(default_factory=dict)

    def _bar(self, key):
        if key not in self.bars:
            from tqdm import tqdm

            self.bars[key] = tqdm(total=self.totals.get(key), desc=key, unit="step", position=len(self.bars),
                                  leave=True, dynamic_ncols=True, file=sys.stderr,
                                  bar_format="{desc:<18} {bar:20} {n_fmt}/{total_fmt} steps {elapsed} {postfix}")
        return self.bars[key]

    def __call__(self, node, status):
        parts = node.fullname.split(".")
        key = parts[-2].removesuffix("_wf") if len(parts) >= 2 else node.fullname
        step = node.name
        log = LOG.debug if self.tty else LOG.info
        if status == "start":
            self.started[node.fullname] = time.time()
            log("[%s] %s ...", key, step)
            if self.tty:
                self._bar(key).set_postfix_str(step)
        elif status == "end":
            took = time.time() - self.started.get(node.fullname, time.time())
            self.timings.setdefault(key, {})[step] = round(took, 1)
            log("[%s] %s done (%s)", key, step, f"{took:.1f} s" if took > 0.05 else "cached")
            if self.tty:
                self._bar(key).update(1)
        elif status == "exception":
            self.failed.setdefault(key, step)
            if self.tty:
                self._bar(key).set_postfix_str(f"{step} FAILED")
            LOG.error("[%s] %s FAILED", key, step)

    def close(self):
        for bar in self.bars.values():
            bar.close()


def configure_nipype(work_dir: Path, debug: bool) -> None:
    """nipype's settings, in this process and, through ``NIPYPE_CONFIG_DIR``, in its workers.

    Workers start from a fresh interpreter (forkserver), so they read the settings
    from ``<work_dir>/.nipype/nipype.cfg`` rather than inheriting this process's.
    """
    import configparser
    import os

    crash_dir = work_dir / "crash"
    crash_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "execution": {
            "crashdump_dir": str(crash_dir),
            "crashfile_format": "txt",
            "stop_on_first_crash": "false",
            "hash_method": "content",
            "remove_unnecessary_outputs": "false",
            "poll_sleep_duration": "0.2",
            "create_report": "false",
            "parameterize_dirs": "false",
        },
        "logging": {"workflow_level": "DEBUG" if debug else "WARNING",
                    "interface_level": "DEBUG" if debug else "WARNING",
                    "utils_level": "WARNING", "log_to_file": "false"},
        "monitoring": {"enabled": "false"},
    }
    config_dir = work_dir / ".nipype"
    config_dir.mkdir(exist_ok=True)
    parser = configparser.ConfigParser()
    parser.read_dict(settings)
    with open(config_dir / "nipype.cfg", "w") as handle:
        parser.write(handle)
    os.environ["NIPYPE_CONFIG_DIR"] = str(config_dir)
    nipype_config.update_config(settings)
    from nipype import logging as nlogging

    nlogging.update_logging(nipype_config)


def crash_reasons(crash_dir: Path, since: float) -> dict[str, str]:
    """Last line of each crash file written since ``since``, keyed by session workflow name."""
    reasons = {}
    for path in sorted(crash_dir.glob("crash-*.txt")):
        if path.stat().st_mtime < since:
            continue
        text = path.read_text(errors="replace")
        match = re.search(r"Node: \S*?(sub_[A-Za-z0-9_]+?)_wf\.(\S+)", text)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        error = next((ln for ln in reversed(lines) if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", ln)), lines[-1])
        if match:
            reasons[match.group(1)] = f"step '{match.group(2)}' failed: {error} (details: {path})"
    return reasons


def run_workflows(sessions: list[SessionInputs], settings: Settings, resources: dict) -> tuple[list, dict, dict]:
    """Run all sessions in one MultiProc graph; return (succeeded keys, failed {key: reason}, timings)."""
    configure_nipype(settings.work_dir, settings.debug)
    top = Workflow(name="morphobids_wf", base_dir=str(settings.work_dir))
    totals = {}
    for inputs in sessions:
        wf = init_session_wf(inputs, settings, resources)
        totals[wf.name.removesuffix("_wf")] = len(wf.list_node_names())
        top.add_nodes([wf])
    tty = sys.stderr.isatty() and not settings.debug and not settings.verbose
    progress = Progress(totals=totals, tty=tty)
    started = time.time()
    # "forkserver": workers start from a clean process, never from a fork of one whose
    # thread pools (torch/OpenMP, ITK) may hold locks - deepbet hangs in such a fork.
    plugin_args = {"n_procs": settings.nprocs, "memory_gb": settings.mem_gb, "raise_insufficient": False,
                   "status_callback": progress, "mp_context": "forkserver"}
    try:
        top.run(plugin="MultiProc", plugin_args=plugin_args)
    except RuntimeError as exc:  # nipype: "Workflow did not execute cleanly"
        LOG.debug("nipype: %s", exc)
    finally:
        progress.close()
    reasons = crash_reasons(settings.work_dir / "crash", started)
    succeeded, failed = [], {}
    for inputs in sessions:
        key = session_wf_name(inputs).removesuffix("_wf")
        if key in progress.failed or key in reasons:
            failed[inputs.key] = reasons.get(key, f"step '{progress.failed.get(key)}' failed")
        else:
            succeeded.append(inputs.key)
    return succeeded, failed, progress.timings
