"""The ASFDA Slicer module's logic on real MRML nodes (headless Slicer core from PyPI), the real
library and the demo bundle: which volumes it uses, geometry, scoring and selection,
segmentation nodes, fine-tuning on drawn segmentations, progress and cancel off the main thread."""
import threading

import numpy as np
import pytest
import slicer
import vtk
from synthetic_data import BUNDLE

import asfda
from ASFDALib import (
    AsfdaLogic, BackgroundTask, arrayFromNode, classifyVolumes, ijkToRas, labelsFromSegmentation, nodeFromVolume,
    referenceVolume, sceneVolumes, volumeFromNode, writeSegmentation,
)


def vtk_matrix(a):
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r][c]))
    return m


def oblique_ijk_to_ras():
    """Anisotropic spacing, a rotation about a non-axis direction (not a permutation, not a flip
    of axes) and a translation: every entry of the 3x3 part non-zero."""
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    angle = 0.6
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    a = np.eye(4)
    a[:3, :3] = rotation @ np.diag([1.9, 2.1, 2.4])
    a[:3, 3] = [-31.5, 12.25, 40.0]
    return a


def scalar_node(scene, array_ijk, ijk_to_ras, name="vol", cls="vtkMRMLScalarVolumeNode", components=1):
    """A volume node holding ``array_ijk`` ([i, j, k] or [i, j, k, c]) with the given geometry."""
    node = scene.AddNewNodeByClass(cls, name)
    a = np.asarray(array_ijk)
    image = vtk.vtkImageData()
    image.SetDimensions(*a.shape[:3])
    from vtkmodules.util.numpy_support import numpy_to_vtk

    flat = np.ascontiguousarray(np.moveaxis(a, [0, 1, 2], [2, 1, 0]) if a.ndim == 4 else a.T)
    scalars = numpy_to_vtk(flat.reshape(-1, components) if components > 1 else flat.ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    node.SetIJKToRASMatrix(vtk_matrix(ijk_to_ras))
    node.SetAndObserveImageData(image)
    return node


# ---- which volumes -------------------------------------------------------------------------------


def test_only_single_component_scalar_images_are_candidates_and_the_rest_say_why(sl, crops):
    s = sl.scene
    good = sl.load(crops["pd_pool_0"], "good")
    sl.load(crops["pd_pool_0_label"], "labels", labelmap=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (8, 9, 10, 3), dtype=np.uint8)
    scalar_node(s, rgb, np.eye(4), "rgb as vector node", "vtkMRMLVectorVolumeNode", components=3)
    scalar_node(s, rgb, np.eye(4), "rgb in a scalar node", "vtkMRMLScalarVolumeNode", components=3)
    dwi = rng.random((8, 9, 10, 7)).astype(np.float32)
    scalar_node(s, dwi, np.eye(4), "dwi", "vtkMRMLDiffusionWeightedVolumeNode", components=7)
    scalar_node(s, rng.random((8, 9, 10)).astype(np.float32), np.eye(4), "dwi baseline-like",
                "vtkMRMLDiffusionWeightedVolumeNode")  # even with one component: a DWI node
    scalar_node(s, rng.random((8, 9, 10, 9)).astype(np.float32), np.eye(4), "dti", "vtkMRMLDiffusionTensorVolumeNode",
                components=9)
    scalar_node(s, rng.random((64, 64, 1)).astype(np.float32), np.eye(4), "one slice")
    s.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no image")
    warped = sl.load(crops["pd_pool_1"], "warped")
    grid = s.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    warped.SetAndObserveTransformNodeID(grid.GetID())
    moved = sl.load(crops["pd_pool_2"], "moved")
    linear = s.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    shift = np.eye(4)
    shift[:3, 3] = [5, -3, 2]
    linear.SetMatrixTransformToParent(vtk_matrix(shift))
    moved.SetAndObserveTransformNodeID(linear.GetID())

    candidates, skipped = classifyVolumes(sceneVolumes(s))
    assert [c.node for c in candidates] == [good, moved]
    reasons = {k.name: k.reason for k in skipped}
    print("\n".join(f"{n}: {r}" for n, r in reasons.items()))
    assert "label map" in reasons["labels"]
    assert "vector or RGB" in reasons["rgb as vector node"]
    assert "3 components per voxel" in reasons["rgb in a scalar node"]  # IsA(scalar) alone would take it
    assert "diffusion-weighted" in reasons["dwi"] and "diffusion-weighted" in reasons["dwi baseline-like"]
    assert "tensor" in reasons["dti"]
    assert "2D image" in reasons["one slice"]
    assert "no image data" in reasons["no image"]
    assert "non-linear transform 'warp'" in reasons["warped"]
    assert len(skipped) == 9

    # Scoring the whole scene goes through: the usable volumes are scored, the others reported.
    logic = AsfdaLogic(BUNDLE, threads=2)
    result = logic.scoreVolumes(sceneVolumes(s))
    assert [sc.id for sc in result.scores] == ["good", "moved"]
    assert result.nodes == {"good": good, "moved": moved}
    assert [k.name for k in result.skipped] == [k.name for k in skipped]
    with pytest.raises(ValueError, match="dwi.*diffusion-weighted"):
        volumeFromNode(s.GetFirstNodeByName("dwi"))


def test_repeated_names_get_unique_ids(sl, crops):
    a, b = sl.load(crops["pd_pool_0"], "same"), sl.load(crops["pd_pool_1"], "same")
    candidates, _ = classifyVolumes([a, b])
    ids = [c.id for c in candidates]
    assert len(set(ids)) == 2 and all(i.startswith("same") for i in ids)


# ---- geometry ------------------------------------------------------------------------------------


def test_oblique_geometry_round_trip_and_agreement_with_slicer_nifti_io(sl, tmp_path):
    affine = oblique_ijk_to_ras()
    rng = np.random.default_rng(1)
    values = rng.normal(100, 20, (11, 13, 7)).astype(np.float32)  # [i, j, k], three different sizes
    node = scalar_node(sl.scene, values, affine)
    assert np.allclose(ijkToRas(node), affine, atol=1e-12)  # MRML keeps the matrix as given

    vol = volumeFromNode(node)
    assert vol.dims == (11, 13, 7)
    assert np.allclose(vol.affine, affine, atol=1e-9)
    got = vol.array()
    image = node.GetImageData()
    for i, j, k in [(0, 0, 0), (10, 0, 0), (0, 12, 0), (0, 0, 6), (3, 7, 5), (10, 12, 6)]:
        assert got[i, j, k] == image.GetScalarComponentAsDouble(i, j, k, 0) == values[i, j, k]
    assert np.array_equal(got, values)
    assert np.array_equal(arrayFromNode(node), values.T)  # slicer.util.arrayFromVolume's [k, j, i]

    # Slicer's NIfTI writer (ITK, LPS inside) and asfda's reader agree with the conversion ...
    sl.save(node, tmp_path / "slicer.nii.gz")
    from_file = asfda.Volume.load(tmp_path / "slicer.nii.gz")
    assert np.allclose(from_file.affine, affine, atol=1e-4)
    assert np.array_equal(from_file.array(), values)
    # ... and asfda's writer with Slicer's reader.
    vol.save(tmp_path / "asfda.nii.gz")
    back = sl.load(tmp_path / "asfda.nii.gz")
    assert np.allclose(ijkToRas(back), affine, atol=1e-4)
    assert np.array_equal(arrayFromNode(back).T, values)
    # asfda Volume -> node -> Volume is exact.
    again = volumeFromNode(nodeFromVolume(vol, sl.scene, "again"))
    assert np.array_equal(again.affine, vol.affine) and np.array_equal(again.array(), values)

    # A linear parent transform moves the world geometry (what the views show), not the voxels.
    transform = sl.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    t = np.eye(4)
    t[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    t[:3, 3] = [10, 20, -5]
    transform.SetMatrixTransformToParent(vtk_matrix(t))
    node.SetAndObserveTransformNodeID(transform.GetID())
    assert np.allclose(volumeFromNode(node).affine, t @ affine, atol=1e-9)
    assert np.allclose(ijkToRas(node, world=False), affine, atol=1e-12)


def test_segmenting_an_oblique_volume_gives_labels_on_its_grid(sl, crops, engine):
    """A real subject resampled by nothing: its voxels with an oblique affine. The labels come
    back on the node's grid, and equal asfda's own segmentation of the same Volume."""
    src = asfda.Volume.load(crops["pd_pool_0"])
    node = scalar_node(sl.scene, src.array(), oblique_ijk_to_ras(), "oblique")
    logic = AsfdaLogic(BUNDLE, threads=2)
    seg = logic.segmentVolume(node)
    labels = labelsFromSegmentation(seg, node, logic.classes)
    expected = engine.segment(volumeFromNode(node)).array()
    assert labels.shape == src.dims
    assert np.array_equal(labels, expected.astype(np.uint8))
    assert len(np.unique(labels)) == 4


# ---- scoring and selection -----------------------------------------------------------------------


def test_score_and_select_with_progress_and_reasons(sl, crops, engine):
    names = ["pd_pool_0", "pd_pool_1", "t1_test_0"]
    nodes = [sl.load(crops[n], n) for n in names]
    logic = AsfdaLogic(BUNDLE, threads=2)
    seen = []
    result = logic.scoreVolumes(nodes, progress=lambda f, m: seen.append((f, m)))
    assert [s.id for s in result.scores] == names and not result.skipped
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert {m for _, m in seen} == {f"Scoring {n} ({i + 1}/3)" for i, n in enumerate(names)}

    # The same scores as asfda on the files themselves: Slicer's reader + the conversion lose nothing.
    for s, n in zip(result.scores, names):
        direct = engine.score(n, asfda.Volume.load(crops[n]))
        assert s.gap_kl == pytest.approx(direct.gap_kl, rel=1e-4, abs=1e-6)
        assert s.asd == pytest.approx(direct.asd, rel=1e-4, abs=1e-6)
        assert s.confidence == pytest.approx(direct.confidence, rel=1e-5)
        assert s.voxels == direct.voxels and s.foreground_voxels == pytest.approx(direct.foreground_voxels, rel=1e-3)

    sel = logic.select(result, budget=2)
    expected = asfda.select(result.scores, 2)
    assert [p.id for p in sel.picks] == expected.ids
    assert [p.node for p in sel.picks] == [result.nodes[i] for i in expected.ids]
    assert [p.order for p in sel.picks] == [0, 1]
    for row in sel.picks:
        assert row.pick == next(p for p in expected.picks if p.id == row.id)
        assert row.reasons[0].startswith(f"ASFDA score {row.pick.combined:.2f} = 1 x DKD rank")
        assert any(r.startswith("knowledge gap") for r in row.reasons)
        assert any(r.startswith("diversity") for r in row.reasons)
    assert [i for i, _ in sel.reliable] == expected.reliable
    assert all(n is result.nodes[i] for i, n in sel.reliable)

    baseline = logic.select(result, budget=1, method="random", seed=3)
    assert [p.id for p in baseline.picks] == asfda.select(result.scores, 1, method="random", seed=3).ids
    assert "'random' baseline" in baseline.picks[0].reasons[0]
    with pytest.raises(ValueError, match="budget must be 1..3"):
        logic.select(result, budget=4)
    with pytest.raises(ValueError, match="budget must be 1..2"):
        logic.select(result, budget=3, labeled=["pd_pool_0"])


# ---- segmentation node ---------------------------------------------------------------------------


def test_segmentation_node_has_the_classes_and_the_engines_labels(sl, crops, engine):
    node = sl.load(crops["pd_pool_1"], "pd1")
    logic = AsfdaLogic(BUNDLE, threads=2)
    seen = []
    seg = logic.segmentVolume(node, progress=lambda f, m: seen.append((f, m)))
    assert seen and seen[-1][0] == pytest.approx(1.0) and seen[-1][1] == "Segmenting pd1"
    assert seg.IsA("vtkMRMLSegmentationNode") and seg.GetScene() is sl.scene
    assert referenceVolume(seg) is node
    classes = engine.classes
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == len(classes) - 1
    for c, info in enumerate(classes[1:], start=1):
        segment = segmentation.GetNthSegment(c - 1)
        assert segment.GetName() == info.name
        assert np.allclose(segment.GetColor(), np.array(info.color) / 255.0)
        entry = vtk.reference("")
        assert segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), entry)
        assert f"~{info.code.kind.scheme}^{info.code.kind.value}^{info.code.kind.meaning}~" in str(entry)
    # Voxel for voxel what Engine.segment gives (read back through Slicer's own export).
    expected = engine.segment(asfda.Volume.load(crops["pd_pool_1"])).array().astype(np.uint8)
    got = labelsFromSegmentation(seg, node, classes)
    assert np.array_equal(got, expected)
    for c in range(1, len(classes)):  # each segment alone holds exactly its class's voxels
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segmentation.GetNthSegmentID(c - 1))
        lm = sl.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(seg, ids, lm, node)
        assert np.array_equal(arrayFromNode(lm).T > 0, expected == c)

    # Segmenting again into the same node replaces its segments.
    assert logic.segmentVolume(node, seg) is seg and segmentation.GetNumberOfSegments() == len(classes) - 1

    with pytest.raises(ValueError, match=r"label values must be class indices 0..3 \(integers\)"):
        writeSegmentation(np.full(node.GetImageData().GetDimensions(), 7), node, seg, classes)
    with pytest.raises(ValueError, match="integers"):
        writeSegmentation(np.full(node.GetImageData().GetDimensions(), 1.5), node, seg, classes)
    with pytest.raises(ValueError, match="not on the grid"):
        moved = asfda.Volume.from_array(expected, np.diag([3.0, 3.0, 3.0, 1.0]))
        writeSegmentation(moved, node, seg, classes)


def user_drawn(sl, label_path, volume, names):
    """A segmentation as a user makes one in Slicer: segments added by name, their voxels imported
    from a label map file (Segmentations > Import), the volume as source geometry."""
    labelmap = sl.load(label_path, "drawn labels", labelmap=True)
    seg = sl.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    ids = vtk.vtkStringArray()
    for name in names:
        ids.InsertNextValue(seg.GetSegmentation().AddEmptySegment("", name))
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg, ids)
    sl.scene.RemoveNode(labelmap)
    return seg


def test_drawn_segmentation_is_read_back_by_name_or_code_and_missing_classes_are_refused(sl, crops, engine):
    volume = sl.load(crops["pd_pool_0"], "pd0")
    truth = asfda.Volume.load(crops["pd_pool_0_label"]).array().astype(np.uint8)
    # Label 1 is csf_other: named in words, with its terminology code; gm and wm in other cases.
    seg = user_drawn(sl, crops["pd_pool_0_label"], volume, ["Cerebrospinal fluid", "GM", "Wm"])
    csf = seg.GetSegmentation().GetNthSegment(0)
    info = engine.classes[1]
    csf.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(),
               "Segmentation category and type - DICOM master list"
               f"~{info.code.category.scheme}^{info.code.category.value}^{info.code.category.meaning}"
               f"~{info.code.kind.scheme}^{info.code.kind.value}^{info.code.kind.meaning}~^^~~^^~^^")
    assert np.array_equal(labelsFromSegmentation(seg, volume, engine.classes), truth)

    other = user_drawn(sl, crops["pd_pool_0_label"], volume, ["csf", "gm", "wm"])
    with pytest.raises(ValueError, match=r"segments \['csf'\] match no class"):
        labelsFromSegmentation(other, volume, engine.classes)
    assert np.array_equal(labelsFromSegmentation(other, volume, engine.classes, {"csf": "csf_other"}), truth)
    other.GetSegmentation().RemoveSegment(other.GetSegmentation().GetNthSegmentID(2))
    with pytest.raises(ValueError, match=r"no segment for \['wm'\]"):
        labelsFromSegmentation(other, volume, engine.classes, {"csf": 1})


# ---- fine-tuning ---------------------------------------------------------------------------------


def test_finetune_on_a_drawn_segmentation_then_apply(sl, crops, tmp_path):
    volume = sl.load(crops["pd_pool_0"], "pd0")
    unlabeled = sl.load(crops["pd_pool_2"], "pd2")
    target = sl.load(crops["pd_pool_1"], "pd1")
    seg = user_drawn(sl, crops["pd_pool_0_label"], volume, ["csf_other", "gm", "wm"])
    logic = AsfdaLogic(BUNDLE, threads=2)
    before = labelsFromSegmentation(logic.segmentVolume(target), target, logic.classes)

    job = logic.prepareFineTuning([seg], [unlabeled, volume, unlabeled])  # each volume once
    assert [i for i, _ in job.unlabeled] == [f"pd2 ({unlabeled.GetID()})"]
    (_, image, label_volume), = job.labeled
    assert np.array_equal(label_volume.array(), asfda.Volume.load(crops["pd_pool_0_label"]).array())
    assert label_volume.same_grid(image)

    seen = []
    result = logic.runFineTuning(job, 2, progress=lambda f, m: seen.append((f, m)), patch_size=32, batch_size=1,
                                 lr=1e-2, seed=1)
    assert result.steps == 2 and result.tuner.steps_done == 2
    assert all(np.isfinite(r.loss) for r in result.reports)
    assert 0.0 < result.kept[f"pd2 ({unlabeled.GetID()})"] <= 1.0
    messages = [m for _, m in seen]
    assert messages[0] == f"Pseudo-labelling pd2 ({unlabeled.GetID()})"
    assert "Fine-tuning step 1/2" in messages and "Fine-tuning step 2/2" in messages
    assert [f for f, _ in seen] == sorted(f for f, _ in seen) and seen[-1][0] == 1.0
    assert logic.adaptedSteps == 0  # not applied yet

    logic.applyFineTuning(result)
    assert logic.adaptedSteps == 2
    after_node = logic.segmentVolume(target)
    after = labelsFromSegmentation(after_node, target, logic.classes)
    assert not np.array_equal(after, before)  # two steps at lr 1e-2 move the segmentation
    # The applied weights are the fine-tuned ones: an engine on the exported bundle agrees exactly.
    logic.exportAdaptedBundle(result, tmp_path / "adapted")
    exported = asfda.Engine(tmp_path / "adapted", threads=2)
    assert np.array_equal(exported.segment(volumeFromNode(target)).array().astype(np.uint8), after)

    logic.configure(BUNDLE, threads=1)  # another engine configuration drops the adapted weights
    assert logic.adaptedSteps == 0

    with pytest.raises(ValueError, match="no reference volume"):
        lone = sl.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lone")
        logic.prepareFineTuning([lone])
    with pytest.raises(ValueError, match="at least one annotated volume"):
        logic.prepareFineTuning([])
    with pytest.raises(ValueError, match="'pd0' has more than one annotation"):
        logic.prepareFineTuning([seg, (user_drawn(sl, crops["pd_pool_0_label"], volume, ["csf_other", "gm", "wm"]),
                                       volume)])
    with pytest.raises(ValueError, match="cannot use as unlabeled volumes: drawn labels"):
        logic.prepareFineTuning([seg], [sl.load(crops["pd_pool_0_label"], "drawn labels", labelmap=True)])


# ---- cancel and threads --------------------------------------------------------------------------


def test_progress_false_cancels_scoring_and_finetuning(sl, crops):
    nodes = [sl.load(crops[n], n) for n in ("pd_pool_0", "pd_pool_1", "pd_pool_2")]
    logic = AsfdaLogic(BUNDLE, threads=2)
    seen = []

    def stop_in_second(f, m):
        seen.append(m)
        return not m.startswith("Scoring pd_pool_1")

    with pytest.raises(asfda.CancelledError):
        logic.scoreVolumes(nodes, progress=stop_in_second)
    assert not any(m.startswith("Scoring pd_pool_2") for m in seen)  # stopped before the third

    seg = user_drawn(sl, crops["pd_pool_0_label"], nodes[0], ["csf_other", "gm", "wm"])
    job = logic.prepareFineTuning([seg])
    steps = []

    def stop_at_step_2(f, m):
        steps.append(m)
        return m != "Fine-tuning step 2/3"

    with pytest.raises(asfda.CancelledError):
        logic.runFineTuning(job, 3, progress=stop_at_step_2, patch_size=32, batch_size=1)
    assert steps[-1] == "Fine-tuning step 2/3" and logic.adaptedSteps == 0

    token = asfda.CancelToken()
    token.cancel()
    with pytest.raises(asfda.CancelledError):
        logic.runScoring(logic.prepareScoring(nodes[:1]), cancel=token)
    assert logic.scoreVolumes(nodes[:1]).scores[0].id == "pd_pool_0"  # the engine is still fine


def test_background_task_reports_on_the_polling_thread_and_cancels_from_it(sl, crops):
    nodes = [sl.load(crops[n], n) for n in ("pd_pool_0", "pd_pool_1", "pd_pool_2")]
    logic = AsfdaLogic(BUNDLE, threads=2)
    main = threading.get_ident()

    # Runs to the end: progress and the result reach the thread that polls.
    job = logic.prepareScoring(nodes)
    workers = set()

    def work(progress, cancel):
        workers.add(threading.get_ident())
        return logic.runScoring(job, progress, cancel)

    task = BackgroundTask(work).start()
    received, done = [], []
    while not task.poll(onProgress=lambda f, m: received.append((threading.get_ident(), f, m)),
                        onDone=lambda r: done.append((threading.get_ident(), r))):
        task.wait(0.01)
    assert workers and main not in workers
    assert received and {t for t, _, _ in received} == {main} and received[-1][1] == pytest.approx(1.0)
    (thread, scores), = done
    assert thread == main and [s.id for s in scores] == ["pd_pool_0", "pd_pool_1", "pd_pool_2"]
    result = logic.finishScoring(job, scores)  # back on the main thread: into the selection
    assert len(logic.select(result, 1).picks) == 1

    # Cancelled from the polling thread while the worker is inside the job: the worker holds at its
    # first report until the cancel has been made, so the run cannot finish first.
    cancelled = threading.Event()

    def gated(progress, cancel):
        def report(f, m):
            keep_going = progress(f, m)
            cancelled.wait(timeout=60)
            return keep_going
        return logic.runScoring(job, report, cancel)

    task = BackgroundTask(gated).start()
    errors = []
    while not task.poll(onProgress=lambda f, m: (task.cancel(), cancelled.set()), onError=errors.append):
        task.wait(0.01)
    assert task.cancelled and len(errors) == 1 and isinstance(errors[0], asfda.CancelledError)
    assert task.result is None

    # A segmentation computed on the worker and written on the polling thread.
    volume = logic.prepareSegmentation(nodes[1])
    task = BackgroundTask(lambda progress, cancel: logic.runSegmentation(volume, progress, cancel, "pd_pool_1")).start()
    written = []
    while not task.poll(onDone=lambda labels: written.append(logic.writeSegmentation(labels, nodes[1]))):
        task.wait(0.01)
    assert written[0].GetSegmentation().GetNumberOfSegments() == 3 and referenceVolume(written[0]) is nodes[1]
