"""The ASFDA module's logic (no Qt): runs in 3D Slicer and with the headless Slicer core from PyPI.

Importing it imports ``asfda``; the module's GUI imports it only once asfda is installed.
"""
from .logic import (
    ANNOTATE, PSEUDO_LABEL, AsfdaLogic, Candidate, FineTuningJob, FineTuningResult, PickRow, ScoringJob,
    ScoringResult, SelectionResult, Skipped, arrayFromNode, classifyVolumes, ijkToRas, labelsFromSegmentation,
    nodeFromVolume, pickReasons, referenceVolume, sceneVolumes, skipReason, volumeFromNode, writeSegmentation,
)
from .task import BackgroundTask

__all__ = [
    "ANNOTATE", "PSEUDO_LABEL", "AsfdaLogic", "BackgroundTask", "Candidate", "FineTuningJob", "FineTuningResult",
    "PickRow", "ScoringJob", "ScoringResult", "SelectionResult", "Skipped", "arrayFromNode", "classifyVolumes",
    "ijkToRas", "labelsFromSegmentation", "nodeFromVolume", "pickReasons", "referenceVolume", "sceneVolumes",
    "skipReason", "volumeFromNode", "writeSegmentation",
]
