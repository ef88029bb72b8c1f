"""Small array helpers shared by the processing steps."""

from __future__ import annotations

import numpy as np


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Slices of the smallest box holding ``mask``, grown by ``margin`` voxels (clipped to the
    grid). Raises ``ValueError`` for an empty mask."""
    idx = np.nonzero(mask)
    if not idx[0].size:
        raise ValueError("empty mask: it has no bounding box")
    return tuple(slice(max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, n))
                 for i, n in zip(idx, mask.shape, strict=True))
