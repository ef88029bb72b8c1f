"""Locate data files inside installed distributions, without importing those packages.

Several source packages are installed with ``--no-deps`` (their import would pull
large dependency trees), so only their files are read, through
:mod:`importlib.metadata`.
"""

from __future__ import annotations

from functools import cache
from importlib import metadata
from pathlib import Path

from ..errors import ResourceError
from .catalog import SourceFile
from .resolver import sha256

INSTALL_HINT = "Install it into this environment (`make env`, see requirements/nodeps.txt), then rebuild."


@cache
def version(package: str) -> str:
    """Installed version of a distribution (ResourceError when it is not installed)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        raise ResourceError(f"Source package {package!r} is not installed.", INSTALL_HINT) from None


def locate(source: SourceFile) -> Path:
    """Absolute path of a file shipped in an installed distribution."""
    version(source.package)
    path = Path(metadata.distribution(source.package).locate_file(source.path))
    if not path.is_file():
        raise ResourceError(
            f"{source.path} is missing from the installed {source.package} {version(source.package)}.",
            INSTALL_HINT,
        )
    return path


def describe(source: SourceFile) -> dict:
    """Provenance record of a source file: package, version, path and sha256."""
    path = locate(source)
    return {"package": source.package, "version": version(source.package), "path": source.path, "sha256": sha256(path)}


def fingerprint_part(source: SourceFile) -> list:
    """Cheap identity of a source file for up-to-date checks (no hashing)."""
    path = locate(source)
    return [source.package, version(source.package), source.path, path.stat().st_size]
