"""ASFDAScore: a 3D Slicer scripted module that scores the volumes in the scene with an asfda
model bundle and shows them ranked, most worth annotating first, with the reasons: the components
of asfda's ASFDA selection (knowledge gap, diversity, ASD and their ranks), confidence, foreground.

Layout: the standard ScriptedLoadableModule / Widget / Logic / Test classes. Everything that does
not need Slicer lives in ASFDAScoreLib (numpy arrays + IJK-to-RAS matrices in, ranked rows out)
and is tested without Slicer (bindings/python/tests/test_slicer_logic.py); this file only moves
data between the scene and that logic, and draws the table.

Install: add this folder to Slicer's additional module paths, and make the asfda Python package
importable in Slicer's Python (``slicer.util.pip_install("/path/to/asfda/bindings/python")``, or
run from the repository, where ASFDAScoreLib finds bindings/python itself). The native library is
found as the asfda package documents ($ASFDA_LIBRARY, the package, the repository's target/).
"""
import logging
import os
from pathlib import Path

import ctk
import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget,
)

from ASFDAScoreLib import ScoringCore

#: The shipped demo bundle when this module runs from the repository.
_REPO_BUNDLE = Path(__file__).resolve().parents[4] / "models" / "demo_brain_unet"

COLUMNS = ["Rank", "Volume", "Role", "ASFDA score", "Gap (KL)", "Diversity", "ASD", "Confidence", "Foreground",
           "Reasons"]


class ASFDAScore(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "ASFDA Score"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["asfda developers"]
        self.parent.helpText = (
            "Scores every scalar volume in the scene with an asfda model bundle and ranks them in the order "
            "asfda's ASFDA selection would pick them for annotation: knowledge gap to the source data times "
            "diversity from the volumes ranked above (DKD), fused with anatomical segmentation difficulty "
            "(ASD), with the model's confidence and foreground fraction as context. With a budget, the rows "
            "say which volumes to annotate and which are reliable for pseudo-labelling. Parent transforms are "
            "not applied (volumes are scored on their own voxel grids)."
        )
        self.parent.acknowledgementText = "asfda: active source-free domain adaptation of segmentation models."


class ASFDAScoreWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = ASFDAScoreLogic()
        self._cancelRequested = False
        self._nodesByName = {}

        box = ctk.ctkCollapsibleButton()
        box.text = "Score volumes"
        self.layout.addWidget(box)
        form = qt.QFormLayout(box)

        self.bundleEdit = ctk.ctkPathLineEdit()
        self.bundleEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.bundleEdit.currentPath = os.environ.get("ASFDA_BUNDLE", str(_REPO_BUNDLE))
        form.addRow("Model bundle:", self.bundleEdit)

        self.threadsSpin = qt.QSpinBox()
        self.threadsSpin.minimum, self.threadsSpin.maximum = 0, 256
        self.threadsSpin.toolTip = "CPU threads for ONNX Runtime (0: let it choose)"
        form.addRow("Threads:", self.threadsSpin)

        self.budgetSpin = qt.QSpinBox()
        self.budgetSpin.minimum, self.budgetSpin.maximum = 0, 10000
        self.budgetSpin.toolTip = "Volumes you can annotate (0: rank only, no roles)"
        form.addRow("Annotation budget:", self.budgetSpin)

        buttons = qt.QHBoxLayout()
        self.scoreButton = qt.QPushButton("Score volumes in scene")
        self.cancelButton = qt.QPushButton("Cancel")
        self.cancelButton.enabled = False
        buttons.addWidget(self.scoreButton)
        buttons.addWidget(self.cancelButton)
        form.addRow(buttons)

        self.progressBar = qt.QProgressBar()
        self.progressBar.setRange(0, 1000)
        self.statusLabel = qt.QLabel("")
        form.addRow(self.progressBar)
        form.addRow(self.statusLabel)

        self.table = qt.QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.table.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        self.layout.addWidget(self.table)
        self.layout.addStretch(1)

        self.scoreButton.connect("clicked(bool)", self.onScore)
        self.cancelButton.connect("clicked(bool)", self.onCancel)
        self.table.connect("cellClicked(int,int)", self.onRowClicked)

    def onCancel(self):
        self._cancelRequested = True

    def _progress(self, fraction, name):
        # Called on the main thread between batches of tiles: keep the GUI alive, offer Cancel.
        self.progressBar.value = int(round(fraction * 1000))
        self.statusLabel.text = f"Scoring {name} ..."
        slicer.app.processEvents()
        return not self._cancelRequested

    def onScore(self):
        import asfda

        self._cancelRequested = False
        self.scoreButton.enabled, self.cancelButton.enabled = False, True
        try:
            rows, self._nodesByName = self.logic.scoreScene(
                self.bundleEdit.currentPath, threads=self.threadsSpin.value, progress=self._progress,
                budget=self.budgetSpin.value or None)
            self._fill(rows)
            self.statusLabel.text = f"{len(rows)} volumes scored."
        except asfda.CancelledError:
            self.statusLabel.text = "Cancelled."
        except Exception as e:
            slicer.util.errorDisplay(f"Scoring failed: {e}", detailedText=getattr(e, "message", ""))
            logging.exception("ASFDAScore failed")
        finally:
            self.scoreButton.enabled, self.cancelButton.enabled = True, False

    def _fill(self, rows):
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            cells = [str(row.rank), row.name, row.role, f"{row.priority:.2f}", f"{row.gap:.3g}",
                     f"{row.diversity:.3g}", f"{row.asd:.3f}", f"{row.confidence:.1%}", f"{row.foreground:.1%}",
                     row.reason_text()]
            for c, text in enumerate(cells):
                item = qt.QTableWidgetItem(text)
                item.setToolTip(row.reason_text())
                self.table.setItem(r, c, item)
        self.table.resizeColumnsToContents()

    def onRowClicked(self, row, _column):
        node = self._nodesByName.get(self.table.item(row, 1).text())
        if node is not None:
            slicer.util.setSliceViewerLayers(background=node, fit=True)


class ASFDAScoreLogic(ScriptedLoadableModuleLogic):
    """Moves volumes from the scene into ScoringCore (which holds all the logic)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._core = None

    def core(self, bundle, threads=0):
        bundle = str(bundle)
        if self._core is None or (self._core.bundle, self._core.threads) != (bundle, threads):
            self._core = ScoringCore(bundle, threads=threads)
        return self._core

    @staticmethod
    def sceneVolumes():
        """(name, node) of every scalar volume in the scene (label maps excluded), unique names."""
        out, seen = [], set()
        for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            if node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetImageData() is None:
                continue
            name = node.GetName()
            if name in seen:
                name = f"{name} ({node.GetID()})"  # score ids must be unique
            seen.add(name)
            out.append((name, node))
        return out

    @staticmethod
    def ijkToRas(node):
        import vtk

        m = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(m)
        return slicer.util.arrayFromVTKMatrix(m)

    def scoreScene(self, bundle, threads=0, progress=None, budget=None):
        """Ranked rows for the scene's volumes and a name -> node map."""
        volumes = self.sceneVolumes()
        items = [(name, slicer.util.arrayFromVolume(node), self.ijkToRas(node)) for name, node in volumes]
        rows = self.core(bundle, threads).score_and_rank(items, progress, budget=budget)
        return rows, dict(volumes)


class ASFDAScoreTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: two volumes in the scene, scored and ranked. Uses the synthetic data
    ($ASFDA_TEST_DATA or the repository's .cache/data/synthetic-v1) when present."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_scores_and_ranks_scene_volumes()

    def test_scores_and_ranks_scene_volumes(self):
        data = Path(os.environ.get("ASFDA_TEST_DATA", _REPO_BUNDLE.parents[1] / ".cache" / "data" / "synthetic-v1"))
        files = [data / "t1" / "test" / "t1_test_000_image.nii.gz",
                 data / "bias_noise" / "pool" / "bias_noise_pool_000_image.nii.gz"]
        if not all(f.is_file() for f in files):
            self.delayDisplay("synthetic data not found: run `make data` in the asfda repository")
            return
        for f in files:
            slicer.util.loadVolume(str(f))
        seen = []
        rows, nodes = ASFDAScoreLogic().scoreScene(_REPO_BUNDLE, threads=2,
                                                    progress=lambda f, n: seen.append(f) or True)
        self.assertEqual([r.rank for r in rows], [1, 2])
        self.assertEqual(rows[0].name, "bias_noise_pool_000_image")  # the shifted site first
        self.assertEqual(set(nodes), {r.name for r in rows})
        self.assertAlmostEqual(seen[-1], 1.0)
        self.delayDisplay("ASFDAScore test passed")
