"""Build one atlas: label image on the 1 and 2 mm grids, BIDS-style label table, sidecar."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd

from . import catalog, sources
from .imaging import GRIDS, resample, save_image, write_text
from .resolver import filename

T = catalog.TEMPLATE


def read_cat12_labels(spec: catalog.AtlasSpec) -> pd.DataFrame:
    """CAT12's ``;``-separated label CSV as ``index, name[, abbreviation]``."""
    raw = pd.read_csv(sources.locate(spec.labels), sep=";")
    table = pd.DataFrame({"index": raw["ROIid"].astype(int), "name": raw["ROIname"].astype(str).str.strip()})
    if "ROIabbr" in raw:
        table["abbreviation"] = raw["ROIabbr"].astype(str).str.strip()
    if spec.names is not None:
        official = read_index_names(sources.locate(spec.names))
        table["long_name"] = table["name"]
        table["name"] = [official.get(i, long) for i, long in zip(table["index"], table["long_name"], strict=True)]
    extra = [(i, n) for i, n in spec.extra_names if i not in set(table["index"])]
    if extra:
        table = pd.concat([table, pd.DataFrame(extra, columns=["index", "name"])], ignore_index=True)
    return table


def read_index_names(path) -> dict[int, str]:
    """A whitespace-separated ``index name [...]`` list (e.g. AAL3v1's label file)."""
    names = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].isdigit():
            names[int(fields[0])] = fields[1]
    return names


def _labels_on_grid(spec: catalog.AtlasSpec) -> dict[int, np.ndarray]:
    img = nib.load(sources.locate(spec.image))
    data = np.asarray(img.dataobj)
    if data.dtype.kind == "f":
        data = np.rint(data)
    data = data.astype(np.int32)
    one = resample(data, img.affine, GRIDS[1], order=0)
    return {1: one, 2: one[::2, ::2, ::2]}  # res-02 voxel i is res-01 voxel 2i


def build_atlas(ctx, spec: catalog.AtlasSpec) -> dict[str, dict]:
    """Write the atlas files for ``spec`` under ``ctx.tpl_dir``; return their provenance."""
    labels = _labels_on_grid(spec)
    table = read_cat12_labels(spec)
    present = {int(v) for v in np.unique(labels[1])} - {0}
    unnamed = sorted(present - set(table["index"]))  # after spec.extra_names
    dropped = sorted(set(table["index"]) - present)
    if unnamed:  # keep every image label in the table, even without an upstream name
        table = pd.concat([table, pd.DataFrame({"index": unnamed, "name": [f"label-{i}" for i in unnamed]})])
    table = table[table["index"].isin(present)].sort_values("index")
    dtype = np.uint8 if max(present, default=0) <= 255 else np.int16
    srcs = [sources.describe(s) for s in (spec.image, spec.labels, spec.names) if s]
    image_src = srcs[0]
    source_text = (
        f"{spec.image.package} {image_src['version']}: {spec.image.path} "
        f"(labels {spec.labels.path}{'; names ' + spec.names.path if spec.names else ''}), "
        f"nearest-neighbour resampled onto TemplateFlow's {T} 1 mm grid; 2 mm = every other 1 mm voxel"
    )
    common = {
        "sources": srcs, "method": source_text, "licence": spec.licence, "citation": spec.citation,
        "atlas": spec.name,
    }
    out = {}
    for r in catalog.RESOLUTIONS:
        name = filename(T, "dseg", res=f"{r:02d}", atlas=spec.atlas, desc=spec.desc)
        save_image(labels[r], GRIDS[r], ctx.tpl_dir / name, dtype, f"{spec.name} atlas")
        out[ctx.rel(name)] = {"resource": f"{spec.name} atlas, {r} mm", **common}
    tsv = filename(T, "dseg", ".tsv", atlas=spec.atlas, desc=spec.desc)
    write_text(table.to_csv(sep="\t", index=False, lineterminator="\n"), ctx.tpl_dir / tsv)
    out[ctx.rel(tsv)] = {"resource": f"{spec.name} label table", **common}
    sidecar = {
        "Name": spec.name,
        "Description": spec.description,
        "Space": T,
        "Source": source_text,
        "License": spec.licence,
        "ReferencesAndLinks": [spec.citation],
        "Sources": srcs,
        "NumberOfLabels": len(table),
        "LabelsWithoutUpstreamName": unnamed,
        "NamesAddedByMorphoBIDS": [name for _, name in spec.extra_names],
        "LabelsLostInResampling": dropped,  # named upstream, absent from the 1 mm image
        "LabelsAbsentAt2mm": sorted(present - {int(v) for v in np.unique(labels[2])}),
    }
    json_name = tsv.replace(".tsv", ".json")
    write_text(json.dumps(sidecar, indent=2) + "\n", ctx.tpl_dir / json_name)
    out[ctx.rel(json_name)] = {"resource": f"{spec.name} sidecar", **common}
    return out
