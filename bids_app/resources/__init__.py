"""Templates, tissue priors and atlases, resolved offline by TemplateFlow file name.

Lookup order: ``$TEMPLATEFLOW_HOME`` (a real TemplateFlow tree), then the embedded
defaults built from files inside installed packages (``python -m bids_app.resources
build``; location ``$MORPHOBIDS_RESOURCES`` or ``<sys.prefix>/share/morphobids/templateflow``).
A resource that is nowhere raises :class:`bids_app.errors.ResourceError`.

Importing this package is cheap (standard library only); building needs nibabel,
scipy and pandas and is imported on demand.
"""

from __future__ import annotations

from .catalog import DEFAULT_ATLASES, TEMPLATE
from .resolver import (
    Atlas,
    available_atlases,
    embedded_dir,
    get_atlas,
    get_template,
    resource_provenance,
    templateflow_home,
)

__all__ = [
    "DEFAULT_ATLASES",
    "TEMPLATE",
    "Atlas",
    "available_atlases",
    "build",
    "embedded_dir",
    "get_atlas",
    "get_template",
    "resource_provenance",
    "templateflow_home",
]


def build(dest=None, force: bool = False, atlases=None, log=None) -> dict:
    """Build the embedded defaults (see :func:`bids_app.resources.builder.build`)."""
    from .builder import build as _build

    return _build(dest=dest, force=force, atlases=atlases, log=log)
