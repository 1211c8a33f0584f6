"""The ASFDA module's logic: MRML nodes in, asfda calls, MRML nodes out. No Qt.

Everything here runs in 3D Slicer and in plain Python with the headless Slicer core from PyPI
(``slicer-core``), which is how it is tested (tests/slicer/). It never uses ``slicer.mrmlScene``,
``slicer.app`` or ``slicer.util``: nodes carry their scene.

Threading: MRML is not thread-safe, asfda is (an engine serves several threads; calls release the
GIL). So every long operation is three steps:

1. ``prepare*`` on the GUI thread: copies voxels and geometry out of the nodes into asfda Volumes
   (a memory copy; no inference).
2. ``run*`` on any thread (the widget uses a worker, see ``task.BackgroundTask``): the asfda work,
   touching no MRML. Takes ``progress(fraction, message)`` (return False to cancel) and an
   ``asfda.CancelToken``; cancelling raises ``asfda.CancelledError``.
3. ``write*``/``apply*`` on the GUI thread: results into nodes.

The one-call methods (``scoreVolumes``, ``segmentVolume``, ``fineTune``) do the three in a row.

Geometry: a volume node's voxels are a vtkImageData with i fastest; ``arrayFromNode`` returns it
as numpy [k, j, i] (C order, as ``slicer.util.arrayFromVolume``), so ``array.T`` is the [i, j, k]
x-fastest array ``asfda.Volume.from_array`` takes without a numpy copy, and the node's IJK-to-RAS
matrix (times its parent transform's matrix to world, when there is one) is the RAS affine asfda
wants. Results come back on the same voxel grid and are placed with the node's own geometry.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import slicer
from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
from vtk import VTK_UNSIGNED_CHAR, vtkImageData, vtkMatrix4x4, vtkStringArray
from vtk import reference as vtkReference

import asfda

#: progress(fraction in [0, 1], message) -> False to cancel (anything else continues).
ProgressFn = Callable[[float, str], Optional[bool]]

#: Below this foreground fraction the model sees almost no anatomy.
LOW_FOREGROUND = 0.01
#: Below this mean foreground confidence the prediction is flagged as unsure.
LOW_CONFIDENCE = 0.7

ANNOTATE, PSEUDO_LABEL = "annotate", "pseudo-label"

#: Volume node classes that pass IsA("vtkMRMLScalarVolumeNode") but are not one scalar image, in
#: the order they are tested (subclasses before their bases).
_NOT_SCALAR_IMAGES = (
    ("vtkMRMLLabelMapVolumeNode", "a label map, not an image"),
    ("vtkMRMLDiffusionWeightedVolumeNode", "a diffusion-weighted (DWI) volume: one image per gradient direction"),
    ("vtkMRMLDiffusionTensorVolumeNode", "a diffusion tensor (DTI) volume"),
    ("vtkMRMLVectorVolumeNode", "a vector or RGB(A) volume"),
    ("vtkMRMLTensorVolumeNode", "a tensor volume"),
)
#: numpy dtypes asfda.Volume.from_array takes (VTK_BIT and others are refused).
_DTYPES = {np.dtype(t) for t in (np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.int64,
                                 np.uint64, np.float32, np.float64)}
#: Geometry checks: affines agree when every entry is within this (mm).
_AFFINE_TOLERANCE = 1e-4
#: Terminology context of the codes written on segments (DICOM's, as the bundle's codes are).
_TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"


def _cancelled(what: str) -> asfda.CancelledError:
    return asfda.CancelledError("ASFDA_STATUS_CANCELLED", f"cancelled {what}")


def _check_cancel(cancel: Optional[asfda.CancelToken], what: str) -> None:
    if cancel is not None and cancel.is_cancelled():
        raise _cancelled(what)


def _report(progress: Optional[ProgressFn], cancel, fraction: float, message: str, what: str) -> None:
    """Calls progress; a False return cancels the token (so a running call stops too) and raises."""
    if progress is not None and progress(min(1.0, max(0.0, fraction)), message) is False:
        if cancel is not None:
            cancel.cancel()
        raise _cancelled(what)
    _check_cancel(cancel, what)


# ---- volumes: which ones, and their voxels and geometry ------------------------------------------


def skipReason(node) -> Optional[str]:
    """Why this node cannot be scored or segmented (None: it can). Checks the class (label maps,
    DWI, DTI, vector/RGB and tensor volumes all pass IsA("vtkMRMLScalarVolumeNode")), then the
    image itself (one component, a supported scalar type, 3D), then its transform."""
    if node is None:
        return "no node"
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        return f"not a scalar volume ({node.GetClassName()})"
    for cls, why in _NOT_SCALAR_IMAGES:
        if node.IsA(cls):
            return why
    image = node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        return "has no image data"
    components = image.GetNumberOfScalarComponents()
    if components != 1:
        return f"has {components} components per voxel (an RGB or vector image); asfda needs one scalar per voxel"
    dims = image.GetDimensions()
    if min(dims) < 1:
        return "is empty"
    if sorted(dims)[0] == 1:
        return f"is a 2D image ({dims[0]} x {dims[1]} x {dims[2]} voxels); asfda segments 3D volumes"
    scalar_type = image.GetScalarTypeAsString()
    try:
        dtype = vtk_to_numpy(image.GetPointData().GetScalars()).dtype
    except (ValueError, TypeError, AttributeError):
        return f"has voxels of type {scalar_type}, which asfda does not read"
    if dtype not in _DTYPES:
        return f"has voxels of type {scalar_type}, which asfda does not read"
    transform = node.GetParentTransformNode()
    if transform is not None and not transform.IsTransformToWorldLinear():
        return (f"is under the non-linear transform '{transform.GetName()}': harden the transform "
                "(Transforms module) or remove it")
    return None


@dataclass(frozen=True)
class Skipped:
    """A volume left out, and why."""

    node: object
    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


@dataclass(frozen=True)
class Candidate:
    """A usable volume and the id its score carries (its name; unique within one call)."""

    node: object
    id: str


def classifyVolumes(nodes: Iterable) -> tuple:
    """``(candidates, skipped)``: the nodes asfda can use, with unique ids, and the others with the
    reason. Names that repeat get the node ID appended to the id."""
    nodes = [n for n in nodes if n is not None]
    names = [n.GetName() or n.GetID() for n in nodes]
    candidates, skipped, seen = [], [], set()
    for node, name in zip(nodes, names):
        reason = skipReason(node)
        if reason is not None:
            skipped.append(Skipped(node, name, reason))
            continue
        uid = name if names.count(name) == 1 and name not in seen else f"{name} ({node.GetID()})"
        seen.add(uid)
        candidates.append(Candidate(node, uid))
    return candidates, skipped


def sceneVolumes(scene) -> list:
    """Every volume node of the scene (vtkMRMLVolumeNode and subclasses), in scene order."""
    collection = scene.GetNodesByClass("vtkMRMLVolumeNode")
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def _matrix(m: vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _vtk_matrix(a) -> vtkMatrix4x4:
    m = vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r][c]))
    return m


def ijkToRas(node, world: bool = True) -> np.ndarray:
    """The node's 4x4 IJK-to-RAS matrix; with ``world``, times its (linear) parent transform's
    matrix to world, so it maps voxel indices to world RAS as the views show them."""
    m = vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    affine = _matrix(m)
    transform = node.GetParentTransformNode() if world else None
    if transform is not None:
        if not transform.IsTransformToWorldLinear():
            raise ValueError(f"{node.GetName()}: parent transform '{transform.GetName()}' is not linear")
        to_world = vtkMatrix4x4()
        transform.GetMatrixTransformToWorld(to_world)
        affine = _matrix(to_world) @ affine
    return affine


def arrayFromNode(node) -> np.ndarray:
    """The node's voxels as numpy [k, j, i] (a view of the VTK memory, C order), as
    slicer.util.arrayFromVolume returns them for a scalar volume."""
    image = node.GetImageData()
    dims = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])


def volumeFromNode(node) -> asfda.Volume:
    """The node as an asfda.Volume: voxels [i, j, k] and the world IJK-to-RAS affine. ValueError
    with the reason for a node asfda cannot use (see skipReason)."""
    reason = skipReason(node)
    if reason is not None:
        raise ValueError(f"volume '{node.GetName() if node is not None else None}' {reason}")
    return asfda.Volume.from_array(arrayFromNode(node).T, ijkToRas(node), asfda.RAS)


def _image_from_ijk(array_ijk: np.ndarray, vtk_type: Optional[int] = None) -> vtkImageData:
    a = np.asarray(array_ijk)
    image = vtkImageData()
    image.SetDimensions(*a.shape[:3])
    flat = np.ascontiguousarray(a.T).ravel()  # [k, j, i] C order = i fastest, as VTK stores points
    scalars = numpy_to_vtk(flat, deep=True, array_type=vtk_type) if vtk_type is not None \
        else numpy_to_vtk(flat, deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def nodeFromVolume(volume: asfda.Volume, scene, name: str = "asfda volume",
                   className: str = "vtkMRMLScalarVolumeNode"):
    """A new volume node in ``scene`` holding an asfda.Volume (float32 voxels, its RAS affine as
    the IJK-to-RAS matrix): the inverse of volumeFromNode for a node without a transform."""
    if volume.channels != 1:
        raise ValueError(f"a volume node holds one channel; this volume has {volume.channels}")
    node = scene.AddNewNodeByClass(className, name)
    node.SetIJKToRASMatrix(_vtk_matrix(volume.affine))
    node.SetAndObserveImageData(_image_from_ijk(volume.view().reshape(volume.dims, order="F")))
    return node


def sameGeometry(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, rtol=0.0, atol=_AFFINE_TOLERANCE))


# ---- segmentations ------------------------------------------------------------------------------


def _segmentations_logic():
    return slicer.vtkSlicerSegmentationsModuleLogic


def _terminology(info: "asfda.ClassInfo") -> Optional[str]:
    """The class's DICOM code as a Slicer terminology entry string (None without a code)."""
    serialize = getattr(getattr(slicer, "vtkSlicerTerminologiesModuleLogic", None), "SerializeTerminologyEntry", None)
    if info.code is None or serialize is None:
        return None
    cat, kind = info.code.category, info.code.kind
    return serialize(_TERMINOLOGY_CONTEXT, cat.value, cat.scheme, cat.meaning, kind.value, kind.scheme, kind.meaning,
                     "", "", "", "", "", "", "", "", "", "")


def writeSegmentation(labels, referenceNode, segmentationNode, classes: Sequence["asfda.ClassInfo"]) -> list:
    """Fills ``segmentationNode`` with one segment per foreground class (classes[1:]), named and
    coloured as the bundle says (and with its DICOM code as terminology), from ``labels``: an
    asfda.Volume on ``referenceNode``'s grid (as Engine.segment returns) or an integer [i, j, k]
    array of class indices. Earlier segments of the node are removed. Returns the segment IDs in
    class order (label value c is segment c - 1)."""
    if isinstance(labels, asfda.Volume):
        expected = ijkToRas(referenceNode)
        if not sameGeometry(labels.affine, expected):
            raise ValueError(f"labels are not on the grid of '{referenceNode.GetName()}' "
                             f"(affine {labels.affine.tolist()} vs {expected.tolist()})")
        values = labels.view().reshape(labels.dims, order="F")
    else:
        values = np.asarray(labels)
    dims = tuple(referenceNode.GetImageData().GetDimensions())
    if values.shape != dims:
        raise ValueError(f"labels have shape {values.shape}, '{referenceNode.GetName()}' has {dims} voxels")
    integral = np.array_equal(values, np.round(values))
    if values.size and (values.min() < 0 or values.max() >= len(classes) or not integral):
        raise ValueError(f"label values must be class indices 0..{len(classes) - 1} (integers), "
                         f"found {values.min()}..{values.max()}")

    scene = referenceNode.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__asfda_labels__")
    try:
        labelmap.CopyOrientation(referenceNode)
        labelmap.SetAndObserveImageData(_image_from_ijk(values.astype(np.uint8), VTK_UNSIGNED_CHAR))
        segmentation = segmentationNode.GetSegmentation()
        was_modifying = segmentationNode.StartModify()
        try:
            segmentation.RemoveAllSegments()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceNode)
            segmentationNode.SetAndObserveTransformNodeID(referenceNode.GetTransformNodeID())
            ids = vtkStringArray()
            for info in classes[1:]:
                color = tuple(c / 255.0 for c in info.color) if info.color is not None else (0.5, 0.5, 0.5)
                sid = segmentation.AddEmptySegment(info.name, info.name, color)
                entry = _terminology(info)
                if entry:
                    segmentation.GetSegment(sid).SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), entry)
                ids.InsertNextValue(sid)
            if not _segmentations_logic().ImportLabelmapToSegmentationNode(labelmap, segmentationNode, ids):
                raise RuntimeError(f"Slicer could not import the labels into '{segmentationNode.GetName()}'")
        finally:
            segmentationNode.EndModify(was_modifying)
    finally:
        scene.RemoveNode(labelmap)
    if segmentationNode.GetDisplayNode() is None:
        segmentationNode.CreateDefaultDisplayNodes()
    return [ids.GetValue(i) for i in range(ids.GetNumberOfValues())]


def referenceVolume(segmentationNode):
    """The volume a segmentation was drawn on (Segment Editor's source volume, stored as the
    segmentation's reference image geometry), or None."""
    return segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole())


def _segment_terminology(segment) -> str:
    """The segment's terminology entry string ("" when it has none)."""
    value = vtkReference("")
    return str(value) if segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), value) else ""


def _segment_class(segment, classes, by_name: dict, overrides: dict) -> Optional[int]:
    if segment.GetName() in overrides:
        return overrides[segment.GetName()]
    name = segment.GetName().strip().lower()
    if name in by_name:
        return by_name[name]
    # A segment whose terminology is one of the classes' codes (e.g. picked from Slicer's list).
    # Serialised as context~category~type~...; each code scheme^value^meaning.
    fields = _segment_terminology(segment).split("~")
    kind = fields[2].split("^")[:2] if len(fields) > 2 else None
    for index, info in enumerate(classes):
        if kind and info.code is not None and kind == [info.code.kind.scheme, info.code.kind.value]:
            return index
    return None


def labelsFromSegmentation(segmentationNode, referenceNode, classes: Sequence["asfda.ClassInfo"],
                           segmentClasses: Optional[dict] = None) -> np.ndarray:
    """The segmentation as class indices [i, j, k] (uint8) on ``referenceNode``'s grid, for
    fine-tuning. Each segment is matched to a class by name (case-insensitive), else by the
    class's DICOM type code in the segment's terminology, else through ``segmentClasses``
    ({segment name: class index or class name}). Every foreground class must have a segment
    (voxels outside all segments are background, so a missing class would be taught as
    background); ValueError names unmatched segments and missing classes. Where segments
    overlap, the later one wins."""
    names = [c.name for c in classes]
    by_name = {n.strip().lower(): i for i, n in enumerate(names)}
    overrides = {}
    for key, value in (segmentClasses or {}).items():
        index = names.index(value) if isinstance(value, str) and value in names else value
        if not isinstance(index, (int, np.integer)) or not 0 <= index < len(classes):
            raise ValueError(f"segment '{key}': {value!r} is not a class of the model ({', '.join(names)})")
        overrides[key] = int(index)
    segmentation = segmentationNode.GetSegmentation()
    ids, lut, unmatched = vtkStringArray(), [0], []
    for i in range(segmentation.GetNumberOfSegments()):
        sid, segment = segmentation.GetNthSegmentID(i), segmentation.GetNthSegment(i)
        index = _segment_class(segment, classes, by_name, overrides)
        if index is None:
            unmatched.append(segment.GetName())
            continue
        ids.InsertNextValue(sid)
        lut.append(index)
    if unmatched:
        raise ValueError(f"segmentation '{segmentationNode.GetName()}': segments {unmatched} match no class of the "
                         f"model ({', '.join(names[1:])}); rename them or map them with segmentClasses")
    missing = [names[c] for c in range(1, len(classes)) if c not in lut]
    if missing:
        raise ValueError(f"segmentation '{segmentationNode.GetName()}' has no segment for {missing}: draw every class "
                         f"({', '.join(names[1:])}), since unsegmented voxels count as background")
    scene = referenceNode.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__asfda_annotation__")
    try:
        if not _segmentations_logic().ExportSegmentsToLabelmapNode(segmentationNode, ids, labelmap, referenceNode):
            raise RuntimeError(f"Slicer could not export '{segmentationNode.GetName()}' on the grid of "
                               f"'{referenceNode.GetName()}'")
        if tuple(labelmap.GetImageData().GetDimensions()) != tuple(referenceNode.GetImageData().GetDimensions()) or \
                not sameGeometry(ijkToRas(labelmap, world=False), ijkToRas(referenceNode, world=False)):
            raise RuntimeError("the exported label map is not on the reference volume's grid")
        exported = arrayFromNode(labelmap).T
        return np.asarray(lut, dtype=np.uint8)[exported]
    finally:
        scene.RemoveNode(labelmap)


# ---- results ------------------------------------------------------------------------------------


@dataclass
class ScoringJob:
    """Volumes copied out of the scene, ready to score on any thread."""

    items: list  # (id, node, asfda.Volume)
    skipped: list  # Skipped


@dataclass
class ScoringResult:
    scores: list  # asfda.Score, in the order of the candidates
    nodes: dict  # id -> node
    skipped: list  # Skipped


@dataclass
class PickRow:
    """One volume of a selection, in pick order, with the reasons it was picked."""

    id: str
    node: object
    pick: "asfda.Pick"
    score: "asfda.Score"
    reasons: list

    @property
    def order(self) -> int:
        return self.pick.order

    def reasonText(self) -> str:
        return "; ".join(self.reasons)


@dataclass
class SelectionResult:
    picks: list  # PickRow, to annotate, in pick order
    reliable: list  # (id, node): confident and close to the picks, for pseudo-labels
    selection: "asfda.Selection"
    skipped: list  # Skipped (from scoring)


@dataclass
class FineTuningJob:
    labeled: list  # (id, image Volume, label Volume)
    unlabeled: list  # (id, image Volume)


@dataclass
class FineTuningResult:
    tuner: "asfda.FineTuner"
    reports: list  # asfda.StepReport per step
    kept: dict = field(default_factory=dict)  # unlabeled id -> share of voxels kept as pseudo-labels

    @property
    def steps(self) -> int:
        return len(self.reports)


def pickReasons(p: "asfda.Pick", s: "asfda.Score", options: "asfda.SelectOptions", remaining: int) -> list:
    """Why a volume was picked: the selection's components at that moment, plus flags."""
    among = f"among the {remaining} not yet picked" if remaining > 1 else "the last one left"
    if options.method == "asfda":
        first = (f"ASFDA score {p.combined:.2f} = {options.w_dkd:g} x DKD rank {p.dkd_rank:.2f} + "
                 f"{options.w_asd:g} x ASD rank {p.asd_rank:.2f} ({among})")
    else:
        first = f"picked by the '{options.method}' baseline ({among})"
    reasons = [
        first,
        f"knowledge gap {p.gap:.3g} (rank {p.gap_rank:.2f})",
        f"diversity {p.diversity:.3g} (1 - cos to the nearest labeled or earlier pick)",
        f"ASD {p.asd:.3f} (rank {p.asd_rank:.2f})",
        f"confidence {s.confidence:.1%}",
        f"foreground {s.foreground_fraction:.1%}",
    ]
    if s.foreground_fraction < LOW_FOREGROUND:
        reasons.append("almost no anatomy found: check the field of view and orientation")
    if s.confidence < LOW_CONFIDENCE:
        reasons.append("low confidence: the model is unsure here")
    return reasons


# ---- the logic ----------------------------------------------------------------------------------


class AsfdaLogic:
    """Scores, selects, segments and fine-tunes MRML volumes with one asfda model bundle.

    The engine is loaded on first use and kept; after ``applyFineTuning`` it segments and scores
    with the adapted weights until the bundle, device or threads change."""

    def __init__(self, bundle=None, threads: int = 0, device: str = "cpu"):
        self._lock = threading.Lock()
        self._engine = None
        self._config = None
        #: Fine-tuning steps behind the engine's current weights (0: the bundle's own).
        self.adaptedSteps = 0
        self.configure(bundle, threads, device)

    def configure(self, bundle=None, threads: int = 0, device: str = "cpu") -> None:
        """Sets the bundle (None: asfda's demo bundle), CPU threads (0: ONNX Runtime's choice) and
        device; a change drops the loaded engine (and any applied fine-tuning)."""
        config = (str(bundle) if bundle else None, int(threads), str(device))
        with self._lock:
            if config != self._config:
                self._config, self._engine, self.adaptedSteps = config, None, 0

    @property
    def bundle(self) -> str:
        return self._config[0] or asfda.demo_bundle()

    @property
    def engine(self) -> "asfda.Engine":
        with self._lock:
            if self._engine is None:
                _, threads, device = self._config
                self._engine = asfda.Engine(self._config[0] or asfda.demo_bundle(), threads=threads, device=device)
            return self._engine

    @property
    def classes(self) -> list:
        """The model's classes (asfda.ClassInfo: name, colour, code), background first."""
        return self.engine.classes

    # ---- scoring and selection ------------------------------------------------------------

    def prepareScoring(self, nodes: Iterable) -> ScoringJob:
        """GUI thread: the usable volumes among ``nodes`` copied into asfda Volumes, and the
        skipped ones with their reasons."""
        candidates, skipped = classifyVolumes(nodes)
        return ScoringJob([(c.id, c.node, volumeFromNode(c.node)) for c in candidates], skipped)

    def runScoring(self, job: ScoringJob, progress: Optional[ProgressFn] = None,
                   cancel: Optional[asfda.CancelToken] = None) -> list:
        """Any thread: the scores of the job's volumes, in order."""
        engine, n, scores = self.engine, len(job.items), []
        for i, (sid, _node, volume) in enumerate(job.items):
            message = f"Scoring {sid} ({i + 1}/{n})"
            _report(progress, cancel, i / n, message, "scoring")

            def each(f, i=i, message=message):
                return None if progress is None else progress((i + f) / n, message)

            scores.append(engine.score(sid, volume, cancel=cancel, progress=each))
        return scores

    def finishScoring(self, job: ScoringJob, scores: list) -> ScoringResult:
        return ScoringResult(scores, {sid: node for sid, node, _ in job.items}, job.skipped)

    def scoreVolumes(self, nodes: Iterable, progress: Optional[ProgressFn] = None,
                     cancel: Optional[asfda.CancelToken] = None) -> ScoringResult:
        """Scores every usable volume among ``nodes``; the others are in ``skipped`` with why."""
        job = self.prepareScoring(nodes)
        return self.finishScoring(job, self.runScoring(job, progress, cancel))

    def select(self, scoring: ScoringResult, budget: int, method: str = "asfda", labeled: Iterable[str] = (),
               **options) -> SelectionResult:
        """Which ``budget`` volumes to annotate (asfda.select; ``options``: other SelectOptions
        fields), each with its reasons, and which others are reliable for pseudo-labels."""
        labeled = list(labeled)
        unlabeled = len(scoring.scores) - len(set(labeled))
        if unlabeled < 1:
            raise ValueError("no scored volume to select from: score some volumes first")
        if not 1 <= budget <= unlabeled:
            raise ValueError(f"budget must be 1..{unlabeled} (the scored, not yet labeled volumes), got {budget}")
        sel = asfda.select(scoring.scores, budget, method=method, labeled=labeled, **options)
        by_id = {s.id: s for s in scoring.scores}
        rows = [PickRow(p.id, scoring.nodes.get(p.id), p, by_id[p.id],
                        pickReasons(p, by_id[p.id], sel.options, unlabeled - p.order))
                for p in sel.picks]
        reliable = [(i, scoring.nodes.get(i)) for i in sel.reliable]
        return SelectionResult(rows, reliable, sel, scoring.skipped)

    # ---- segmentation -----------------------------------------------------------------------

    def prepareSegmentation(self, volumeNode) -> asfda.Volume:
        return volumeFromNode(volumeNode)

    def runSegmentation(self, volume: asfda.Volume, progress: Optional[ProgressFn] = None,
                        cancel: Optional[asfda.CancelToken] = None, name: str = "") -> asfda.Volume:
        message = f"Segmenting {name}".strip()
        _report(progress, cancel, 0.0, message, "segmentation")
        return self.engine.segment(volume, cancel=cancel,
                                   progress=None if progress is None else lambda f: progress(f, message))

    def writeSegmentation(self, labels: asfda.Volume, volumeNode, segmentationNode=None):
        """GUI thread: the labels into ``segmentationNode`` (a new one named after the volume when
        None), one segment per foreground class."""
        if segmentationNode is None:
            segmentationNode = volumeNode.GetScene().AddNewNodeByClass(
                "vtkMRMLSegmentationNode", f"{volumeNode.GetName()} asfda segmentation")
        writeSegmentation(labels, volumeNode, segmentationNode, self.classes)
        return segmentationNode

    def segmentVolume(self, volumeNode, segmentationNode=None, progress: Optional[ProgressFn] = None,
                      cancel: Optional[asfda.CancelToken] = None):
        """Segments one volume into a segmentation node (returned)."""
        labels = self.runSegmentation(self.prepareSegmentation(volumeNode), progress, cancel, volumeNode.GetName())
        return self.writeSegmentation(labels, volumeNode, segmentationNode)

    # ---- fine-tuning -------------------------------------------------------------------------

    def prepareFineTuning(self, annotations: Iterable, unlabeled: Iterable = (),
                          segmentClasses: Optional[dict] = None) -> FineTuningJob:
        """GUI thread: annotated volumes (segmentation nodes drawn by the user, each on its
        reference volume, or (segmentationNode, volumeNode) pairs) exported as class-index label
        maps on their volume's grid, and unlabeled volumes (pseudo-labelled by the model)."""
        classes, labeled, used = self.classes, [], set()
        for item in annotations:
            seg, volume = item if isinstance(item, (tuple, list)) else (item, referenceVolume(item))
            if volume is None:
                raise ValueError(f"segmentation '{seg.GetName()}' has no reference volume: select the volume it was "
                                 "drawn on (Segment Editor's source volume)")
            if volume.GetID() in used:
                raise ValueError(f"volume '{volume.GetName()}' has more than one annotation (one is "
                                 f"'{seg.GetName()}'): fine-tune on one segmentation per volume")
            image = volumeFromNode(volume)
            labels = labelsFromSegmentation(seg, volume, classes, segmentClasses)
            label_volume = asfda.Volume.from_array(labels, image.affine, asfda.RAS)
            labeled.append((f"{volume.GetName()} ({volume.GetID()})", image, label_volume))
            used.add(volume.GetID())
        if not labeled:
            raise ValueError("fine-tuning needs at least one annotated volume (a segmentation drawn on a volume)")
        extra = []
        for n in unlabeled:
            if n is not None and n.GetID() not in used:
                used.add(n.GetID())
                extra.append(n)
        candidates, skipped = classifyVolumes(extra)
        if skipped:
            raise ValueError("cannot use as unlabeled volumes: " + "; ".join(str(s) for s in skipped))
        return FineTuningJob(labeled, [(f"{c.node.GetName()} ({c.node.GetID()})", volumeFromNode(c.node))
                                       for c in candidates])

    def runFineTuning(self, job: FineTuningJob, steps: int, progress: Optional[ProgressFn] = None,
                      cancel: Optional[asfda.CancelToken] = None, **options) -> FineTuningResult:
        """Any thread: ``steps`` fine-tuning steps from the engine's bundle (``options``: other
        asfda.FineTuneOptions fields, e.g. lr, patch_size). Progress after each unlabeled volume
        (pseudo-labelled now: one inference each) and each step; cancel stops between them."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        tuner = asfda.FineTuner(self.engine, asfda.FineTuneOptions(total_steps=steps, **options))
        total, done = len(job.unlabeled) + steps, 0
        for sid, image, label in job.labeled:
            tuner.add_labeled(sid, image, label)
        kept = {}
        for sid, image in job.unlabeled:
            _report(progress, cancel, done / total, f"Pseudo-labelling {sid}", "fine-tuning")
            kept[sid] = tuner.add_unlabeled(sid, image)
            done += 1
        reports = []
        for step in range(steps):
            _report(progress, cancel, done / total, f"Fine-tuning step {step + 1}/{steps}", "fine-tuning")
            reports.append(tuner.step())
            done += 1
        _report(progress, cancel, 1.0, f"Fine-tuned {steps} steps, loss {reports[-1].loss:.3f}", "fine-tuning")
        return FineTuningResult(tuner, reports, kept)

    def applyFineTuning(self, result: FineTuningResult) -> None:
        """The engine segments and scores with the fine-tuned weights from now on."""
        result.tuner.apply_to(self.engine)
        self.adaptedSteps = result.tuner.steps_done

    def exportAdaptedBundle(self, result: FineTuningResult, folder) -> str:
        """Writes the adapted bundle to the new ``folder`` (usable as a bundle path later)."""
        result.tuner.export_bundle(folder)
        return str(folder)

    def fineTune(self, annotations: Iterable, unlabeled: Iterable = (), steps: int = 50,
                 progress: Optional[ProgressFn] = None, cancel: Optional[asfda.CancelToken] = None,
                 apply: bool = True, segmentClasses: Optional[dict] = None, **options) -> FineTuningResult:
        """prepareFineTuning + runFineTuning, then (``apply``) applyFineTuning."""
        job = self.prepareFineTuning(annotations, unlabeled, segmentClasses)
        result = self.runFineTuning(job, steps, progress, cancel, **options)
        if apply:
            self.applyFineTuning(result)
        return result
