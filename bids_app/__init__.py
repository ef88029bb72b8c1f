"""MorphoBIDS: a structural-MRI BIDS App (preprocessing, morphometry, QC, group statistics)."""

__version__ = "0.1.0"
__all__ = ["__version__"]
