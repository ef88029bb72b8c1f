"""``python -m bids_app.resources {build,list}``: build or inspect the offline resources."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import MorphoBIDSError
from . import catalog
from .resolver import embedded_dir, get_atlas, get_template, resource_provenance, templateflow_home


def _resolve_all() -> list[dict]:
    """One record per known resource: name, where it resolves from, source, licence."""
    rows = []
    for r in catalog.RESOLUTIONS:
        for item in catalog.TEMPLATE_ITEMS:
            row = {"resource": f"{catalog.TEMPLATE} {item.key} ({r} mm)", "licence": item.licence}
            try:
                path = get_template(resolution=r, suffix=item.suffix, desc=item.desc, label=item.label)
                info = resource_provenance(path)
                srcs = info.get("sources") or [{"package": info.get("source", "?")}]
                row |= {"origin": info["origin"], "path": str(path), "licence": info.get("licence", item.licence),
                        "source": "; ".join(_source_text(s) for s in srcs)}
            except MorphoBIDSError as exc:
                row |= {"origin": "MISSING", "path": exc.message, "source": _source_text_static(item.sources)}
            rows.append(row)
    for spec in catalog.ATLASES:
        for r in catalog.RESOLUTIONS:
            row = {"resource": f"atlas {spec.name} ({r} mm)", "licence": spec.licence}
            try:
                atlas = get_atlas(spec.name, resolution=r)
                row |= {"origin": resource_provenance(atlas.dseg)["origin"], "path": str(atlas.dseg),
                        "source": atlas.source}
            except MorphoBIDSError as exc:
                row |= {"origin": "MISSING", "path": exc.message,
                        "source": _source_text_static((spec.image, spec.labels))}
            rows.append(row)
    return rows


def _source_text(src: dict) -> str:
    return " ".join(str(src[k]) for k in ("package", "version", "path") if k in src)


def _source_text_static(srcs) -> str:
    return "; ".join(f"{s.package}: {s.path}" for s in srcs)


def cmd_list(args) -> int:
    rows = _resolve_all()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    home = templateflow_home()
    print(f"TEMPLATEFLOW_HOME: {home or '(not set)'}")
    print(f"embedded:          {embedded_dir()}\n")
    for row in rows:
        print(f"{row['resource']}  [{row['origin']}]")
        print(f"    path:    {row['path']}")
        print(f"    source:  {row['source']}")
        print(f"    licence: {row['licence']}")
    missing = sum(row["origin"] == "MISSING" for row in rows)
    if missing:
        print(f"\n{missing} resource(s) missing: run `python -m bids_app.resources build`.")
    return 0


def cmd_build(args) -> int:
    from .builder import build

    build(dest=args.dest, force=args.force, log=print)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bids_app.resources", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build the embedded templates, priors and atlases (offline)")
    p_build.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p_build.add_argument("--dest", help="target folder (default: $MORPHOBIDS_RESOURCES or "
                         "<sys.prefix>/share/morphobids/templateflow)")
    p_build.set_defaults(func=cmd_build)
    p_list = sub.add_parser("list", help="show every resource, where it resolves from, source and licence")
    p_list.add_argument("--json", action="store_true", help="machine-readable output")
    p_list.set_defaults(func=cmd_list)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MorphoBIDSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
