"""ASFDA: a 3D Slicer scripted module for asfda (active source-free domain adaptation).

Scores the selected volumes for how informative annotating them would be, shows which to annotate
under a budget with each pick's reasons, segments a volume into a segmentation node (the model's
classes, names and colours), and fine-tunes the model on segmentations the user has drawn (plus the
selection's reliable volumes, pseudo-labelled), then segments with the adapted model.

Layout as Slicer's scripted-module template: ASFDA (module), ASFDAParameterNode
(parameterNodeWrapper), ASFDAWidget (.ui file, node selectors), ASFDALogic, ASFDATest. All the work
is in ASFDALib (no Qt; tested with the headless Slicer core from PyPI in tests/slicer/), and long
work runs on a worker thread (ASFDALib.BackgroundTask) polled by a QTimer, with progress and Cancel.

asfda itself is a Python wheel: ``make wheel`` in the asfda repository, then in Slicer's Python
console ``slicer.util.pip_install("/path/to/asfda-<version>-py3-none-manylinux_2_<N>_x86_64.whl")``
or the module's "Install asfda wheel..." button.
"""
import importlib
import logging
import pathlib
import sys
import time
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: asfda.select's methods (tests/slicer/test_module_files.py checks they agree).
METHODS = ("asfda", "random", "foreground_random", "entropy", "dkd", "coreset")
DEVICES = ("cpu", "auto", "cuda")
#: The asfda Python package of the source tree this module sits in, if it does.
_SOURCE_BINDINGS = pathlib.Path(__file__).resolve().parents[2] / "python"


def asfdaImportError() -> Optional[str]:
    """None when asfda imports (from Slicer's Python, else from the source tree), else why not."""
    try:
        importlib.import_module("asfda")
        return None
    except ImportError as first:
        if (_SOURCE_BINDINGS / "asfda" / "__init__.py").is_file() and str(_SOURCE_BINDINGS) not in sys.path:
            sys.path.append(str(_SOURCE_BINDINGS))
            try:
                importlib.import_module("asfda")
                return None
            except ImportError as second:
                return str(second)
        return str(first)


class ASFDA(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "ASFDA"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["asfda developers"]
        self.parent.helpText = (
            "Adapts a segmentation model to this site's scans with few annotations. <b>Score</b> the "
            "selected volumes (none checked: all) and see which to annotate under the budget, with each pick's "
            "reasons (knowledge gap, diversity, anatomical segmentation difficulty). <b>Segment</b> a volume "
            "into a segmentation node. Draw or correct segmentations of the picked volumes in Segment Editor "
            "(one segment per class, named as the model's classes), then <b>Fine-tune</b>: the model learns "
            "from them and from pseudo-labels of the reliable volumes, and segments with the adapted weights "
            "from then on. Volumes asfda cannot use (label maps, RGB/vector, DWI/DTI, 2D, non-linearly "
            "transformed) are skipped, with the reason. Needs the asfda Python wheel: "
            "<i>Install asfda wheel...</i> below or <code>slicer.util.pip_install(path_to_wheel)</code>."
        )
        self.parent.acknowledgementText = "asfda: active source-free domain adaptation of segmentation models."


@parameterNodeWrapper
class ASFDAParameterNode:
    """The module's settings, saved with the scene."""

    bundlePath: pathlib.Path
    threads: Annotated[int, WithinRange(0, 256)] = 0
    device: Annotated[str, Choice(list(DEVICES))] = "cpu"
    budget: Annotated[int, WithinRange(1, 10000)] = 2
    method: Annotated[str, Choice(list(METHODS))] = "asfda"
    segmentVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    fineTuneSteps: Annotated[int, WithinRange(1, 100000)] = 50
    learningRate: Annotated[float, WithinRange(0.0, 1.0)] = 0.0
    usePseudoLabels: bool = True


class ASFDAWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    POLL_MS = 100

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._task = None
        self._timer = None
        self._selection = None
        self._fineTuning = None

    # ---- setup -------------------------------------------------------------------------------

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ASFDA.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ASFDALogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MS)
        self._timer.connect("timeout()", self._poll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.installButton.connect("clicked(bool)", self.onInstall)
        self.ui.scoreButton.connect("clicked(bool)", self.onScore)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.fineTuneButton.connect("clicked(bool)", self.onFineTune)
        self.ui.exportBundleButton.connect("clicked(bool)", self.onExportBundle)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.picksTable.connect("cellClicked(int,int)", self.onPickClicked)
        self.ui.annotationsSelector.connect("checkedNodesChanged()", self._updateButtons)
        self.ui.skippedLabel.visible = False

        self.initializeParameterNode()
        self._updateAsfdaStatus()

    def cleanup(self):
        if self._task is not None and not self._task.finished:
            self._task.cancel()
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event):
        if self._task is not None and not self._task.finished:
            self._task.cancel()
        self._selection = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if str(self._parameterNode.bundlePath) in ("", ".") and asfdaImportError() is None:
            import asfda

            try:
                self._parameterNode.bundlePath = pathlib.Path(asfda.demo_bundle())
            except asfda.Error:
                pass
        if not self._parameterNode.segmentVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first is not None and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.segmentVolume = first

    def setParameterNode(self, inputParameterNode: Optional[ASFDAParameterNode]):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._updateButtons()

    # ---- state -------------------------------------------------------------------------------

    def _busy(self) -> bool:
        return self._task is not None and not self._task.finished

    def _updateButtons(self, caller=None, event=None):
        ready = asfdaImportError() is None and self._parameterNode is not None and not self._busy()
        p = self._parameterNode
        self.ui.scoreButton.enabled = ready
        self.ui.segmentButton.enabled = ready and p.segmentVolume is not None
        self.ui.fineTuneButton.enabled = ready and len(self.ui.annotationsSelector.checkedNodes()) > 0
        self.ui.exportBundleButton.enabled = ready and self._fineTuning is not None
        self.ui.cancelButton.enabled = self._busy()
        self.ui.installButton.enabled = not self._busy()

    def _updateAsfdaStatus(self):
        error = asfdaImportError()
        if error is None:
            import asfda

            self.ui.asfdaStatusLabel.text = f"asfda {asfda.__version__} ({asfda.library_path()})"
        else:
            self.ui.asfdaStatusLabel.text = f"asfda is not installed in Slicer's Python: {error}"
        self._updateButtons()

    def _configureLogic(self):
        p = self._parameterNode
        bundle = str(p.bundlePath) if str(p.bundlePath) not in ("", ".") else None
        self.logic.configure(bundle, p.threads, p.device)

    # ---- install -----------------------------------------------------------------------------

    def onInstall(self):
        path = qt.QFileDialog.getOpenFileName(self.parent, "asfda wheel (make wheel: dist/asfda-*.whl)", "",
                                              "Python wheels (*.whl)")
        if not path:
            return
        with slicer.util.tryWithErrorDisplay("Installing the asfda wheel failed", waitCursor=True):
            slicer.util.pip_install([path])  # a list: a path with spaces stays one argument
            importlib.invalidate_caches()
            for name in [m for m in sys.modules if m == "asfda" or m.startswith("asfda.")]:
                del sys.modules[name]  # a source-tree copy imported earlier must not shadow the wheel
        self._updateAsfdaStatus()
        if asfdaImportError() is None and str(self._parameterNode.bundlePath) in ("", "."):
            self.initializeParameterNode()

    # ---- background work ---------------------------------------------------------------------

    def _start(self, work, onDone, what):
        from ASFDALib import BackgroundTask

        self._what = what
        self._onDone = onDone
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = f"{what} ..."
        self._task = BackgroundTask(work, name=f"asfda {what}").start()
        self._timer.start()
        self._updateButtons()

    def _poll(self):
        if self._task is None:
            self._timer.stop()
            return
        # Hand the GIL to the worker for a moment even if the embedding holds it while idle: the
        # worker's asfda calls release it, but it needs it between them (progress callbacks).
        time.sleep(0.002)
        done = self._task.poll(onProgress=self._onProgress, onDone=self._finish, onError=self._fail)
        if done:
            self._timer.stop()
            self._updateButtons()

    def _onProgress(self, fraction, message):
        self.ui.progressBar.value = int(round(fraction * 100))
        if message:
            self.ui.statusLabel.text = message

    def _finish(self, result):
        try:
            self._onDone(result)
            self.ui.progressBar.value = 100
        except Exception as e:  # writing results into the scene (e.g. a node was deleted meanwhile)
            self._fail(e)

    def _fail(self, error):
        import asfda

        if isinstance(error, asfda.CancelledError):
            self.ui.statusLabel.text = f"{self._what}: cancelled."
            return
        self.ui.statusLabel.text = f"{self._what} failed: {error}"
        logging.error(f"ASFDA: {self._what} failed: {error}")
        slicer.util.errorDisplay(f"{self._what} failed: {error}")

    def onCancel(self):
        if self._busy():
            self._task.cancel()
            self.ui.statusLabel.text = f"{self._what}: cancelling ..."

    def _guarded(self, what, prepare):
        """Runs a GUI-thread preparation step; errors go to the user, not the log only."""
        try:
            self._configureLogic()
            return prepare()
        except Exception as e:
            self._what = what
            self._fail(e)
            return None

    # ---- actions -----------------------------------------------------------------------------

    def onScore(self):
        nodes = list(self.ui.scoreVolumesSelector.checkedNodes()) or self.logic.sceneVolumes(slicer.mrmlScene)
        job = self._guarded("Scoring", lambda: self.logic.prepareScoring(nodes))
        if job is None:
            return
        self._showSkipped(job.skipped)
        if not job.items:
            self.ui.statusLabel.text = "No volume asfda can score (see the skipped volumes)."
            return

        def done(scores):
            result = self.logic.finishScoring(job, scores)
            budget = min(self._parameterNode.budget, len(scores))
            self._selection = self.logic.select(result, budget, method=self._parameterNode.method)
            self._showSelection(self._selection)
            self.ui.statusLabel.text = (f"{len(scores)} volumes scored; annotate {budget}"
                                        f"{', skipped ' + str(len(job.skipped)) if job.skipped else ''}.")

        self._start(lambda progress, cancel: self.logic.runScoring(job, progress, cancel), done, "Scoring")

    def onSegment(self):
        node = self._parameterNode.segmentVolume
        volume = self._guarded("Segmentation", lambda: self.logic.prepareSegmentation(node))
        if volume is None:
            return

        def done(labels):
            if node.GetScene() is None:
                raise RuntimeError(f"volume '{node.GetName()}' was removed from the scene meanwhile")
            seg = self.logic.writeSegmentation(labels, node, self._parameterNode.outputSegmentation)
            self._parameterNode.outputSegmentation = seg
            adapted = f" (adapted model, {self.logic.adaptedSteps} steps)" if self.logic.adaptedSteps else ""
            self.ui.statusLabel.text = f"Segmented {node.GetName()} into {seg.GetName()}{adapted}."

        self._start(lambda progress, cancel: self.logic.runSegmentation(volume, progress, cancel, node.GetName()),
                    done, "Segmentation")

    def onFineTune(self):
        p = self._parameterNode
        annotations = list(self.ui.annotationsSelector.checkedNodes())
        unlabeled = [n for _, n in self._selection.reliable if n is not None and n.GetScene() is not None] \
            if (p.usePseudoLabels and self._selection is not None) else []
        job = self._guarded("Fine-tuning", lambda: self.logic.prepareFineTuning(annotations, unlabeled))
        if job is None:
            return
        options = {} if p.learningRate <= 0 else {"lr": p.learningRate}
        steps = p.fineTuneSteps

        def done(result):
            self.logic.applyFineTuning(result)
            self._fineTuning = result
            self.ui.statusLabel.text = (f"Fine-tuned {result.steps} steps on {len(job.labeled)} annotated and "
                                        f"{len(job.unlabeled)} pseudo-labelled volumes (last loss "
                                        f"{result.reports[-1].loss:.3f}); Segment now uses the adapted model.")

        self._start(lambda progress, cancel: self.logic.runFineTuning(job, steps, progress, cancel, **options),
                    done, "Fine-tuning")

    def onExportBundle(self):
        if self._fineTuning is None:
            return
        folder = qt.QFileDialog.getSaveFileName(self.parent, "New folder for the adapted bundle", "", "")
        if folder:
            with slicer.util.tryWithErrorDisplay("Exporting the adapted bundle failed", waitCursor=True):
                self.logic.exportAdaptedBundle(self._fineTuning, folder)
                self.ui.statusLabel.text = f"Adapted bundle written to {folder} (use it as the model bundle)."

    # ---- results -----------------------------------------------------------------------------

    def _showSkipped(self, skipped):
        self.ui.skippedLabel.text = "\n".join(f"Skipped {s}" for s in skipped)
        self.ui.skippedLabel.visible = bool(skipped)

    def _showSelection(self, selection):
        from ASFDALib import ANNOTATE, PSEUDO_LABEL

        rows = [(str(r.order + 1), r.id, ANNOTATE, f"{r.pick.combined:.2f}", r.reasonText(), r.node)
                for r in selection.picks]
        rows += [("", i, PSEUDO_LABEL, "", "reliable: confident and close to the picks; fine-tuning uses its "
                  "pseudo-labels", n) for i, n in selection.reliable]
        table = self.ui.picksTable
        table.setRowCount(len(rows))
        self._rowNodes = [r[-1] for r in rows]
        for r, row in enumerate(rows):
            for c, text in enumerate(row[:-1]):
                item = qt.QTableWidgetItem(text)
                item.setToolTip(row[4])
                table.setItem(r, c, item)
        table.resizeColumnsToContents()

    def onPickClicked(self, row, _column):
        node = self._rowNodes[row] if 0 <= row < len(getattr(self, "_rowNodes", [])) else None
        if node is not None and node.GetScene() is not None:
            slicer.util.setSliceViewerLayers(background=node, fit=True)
            self._parameterNode.segmentVolume = node


class ASFDALogic(ScriptedLoadableModuleLogic):
    """Slicer's logic class: the parameter node, and the work of ASFDALib.AsfdaLogic (created once
    asfda is importable), whose methods it offers under the same names (see ASFDALib.logic)."""

    _DELEGATED = frozenset({
        "configure", "bundle", "engine", "classes", "adaptedSteps", "prepareScoring", "runScoring",
        "finishScoring", "scoreVolumes", "select", "prepareSegmentation", "runSegmentation", "writeSegmentation",
        "segmentVolume", "prepareFineTuning", "runFineTuning", "applyFineTuning", "exportAdaptedBundle", "fineTune",
    })

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._impl = None

    def getParameterNode(self):
        return ASFDAParameterNode(super().getParameterNode())

    @property
    def impl(self):
        """The ASFDALib.AsfdaLogic doing the work; RuntimeError saying how to install asfda if it
        is not importable."""
        if self._impl is None:
            error = asfdaImportError()
            if error is not None:
                raise RuntimeError(f"asfda is not installed in Slicer's Python ({error}): install the wheel "
                                   "(Install asfda wheel... or slicer.util.pip_install)")
            from ASFDALib import AsfdaLogic

            self._impl = AsfdaLogic()
        return self._impl

    def __getattr__(self, name):
        # Only reached for names this class does not define.
        if name in ASFDALogic._DELEGATED:
            return getattr(self.impl, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @staticmethod
    def sceneVolumes(scene):
        from ASFDALib import sceneVolumes

        return sceneVolumes(scene)


class ASFDATest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Reload and Test): a synthetic volume is scored, segmented into a
    segmentation node with the model's classes, and an RGB volume is skipped with its reason."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_score_segment_and_skip()

    def test_score_segment_and_skip(self):
        import numpy as np

        error = asfdaImportError()
        if error is not None:
            self.fail(f"asfda is not importable: {error}")
        ijk = np.indices((48, 48, 48)).astype(np.float32)
        r = np.sqrt(((ijk - 24.0) ** 2).sum(axis=0))
        brain = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "sphere")
        slicer.util.updateVolumeFromArray(brain, (np.where(r < 18, 300 - 5 * r, 0)).astype(np.float32))
        brain.SetSpacing(2.0, 2.0, 2.0)
        rgb = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
        slicer.util.updateVolumeFromArray(rgb, np.zeros((8, 8, 8, 3), dtype=np.uint8))

        logic = ASFDALogic()
        seen = []
        result = logic.scoreVolumes([brain, rgb], progress=lambda f, m: seen.append(f))
        self.assertEqual([s.id for s in result.scores], ["sphere"])
        self.assertEqual([s.name for s in result.skipped], ["rgb"])
        self.assertAlmostEqual(seen[-1], 1.0)
        seg = logic.segmentVolume(brain)
        self.assertEqual(seg.GetSegmentation().GetNumberOfSegments(), len(logic.classes) - 1)
        self.delayDisplay("ASFDA test passed")
