"""Demo dataset: phantoms of one real head with known deformation, bias, noise and atrophy.

``python -m bids_app.demo make DIR`` writes a small BIDS dataset (8 subjects: 4
controls, 4 patients with the grey matter of both precentral gyri shrunk by 10 %,
the motor-cortex pattern of ALS) and its ground truth under
``DIR/derivatives/groundtruth``; ``python -m bids_app.demo run`` also runs both
levels of the app on it (``make demo``). See ``docs/demo.md``.

Modules: :mod:`.sources` (the real head, template, atlas), :mod:`.fields` (pure
functions: deformations, bias, noise, local atrophy), :mod:`.head` (truth on the
head's grid, computed once), :mod:`.phantom` (one subject), :mod:`.build` (files).
"""

from __future__ import annotations

from .build import GROUNDTRUTH, make_dataset, truth_paths
from .truth import load_spec, regenerate_subject

__all__ = ["GROUNDTRUTH", "load_spec", "make_dataset", "regenerate_subject", "truth_paths"]
