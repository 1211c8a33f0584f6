"""Slicer-free logic of the ASFDAScore module (importable and testable without 3D Slicer)."""
from .core import RankedVolume, ScoringCore, rank_scores

__all__ = ["RankedVolume", "ScoringCore", "rank_scores"]
