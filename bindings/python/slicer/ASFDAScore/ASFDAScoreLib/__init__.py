"""Slicer-free logic of the ASFDAScore module (importable and testable without 3D Slicer)."""
from .core import ANNOTATE, PSEUDO_LABEL, RankedVolume, ScoringCore, rank_scores

__all__ = ["ANNOTATE", "PSEUDO_LABEL", "RankedVolume", "ScoringCore", "rank_scores"]
