"""The ASFDA Slicer module's tests run its logic on real MRML nodes from the headless Slicer core on
PyPI (``slicer-core``: Slicer's MRML, logic and loadable-module libraries without Qt), in their own
virtualenv (`make test-slicer`). A scene is set up as Slicer's application does before modules
run: application logic, default colour tables, and the Segmentations module logic (which registers
the segmentation representations and converters)."""
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
for p in (ROOT / "bindings" / "slicer" / "ASFDA", ROOT / "bindings" / "python", ROOT / "bindings" / "python" / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import slicer  # noqa: E402  (slicer-core)
import vtk  # noqa: E402

import asfda  # noqa: E402
from synthetic_data import BUNDLE, image, label  # noqa: E402

# VTK errors and warnings to stderr (pytest shows them with a failure), not a popup window.
_out = vtk.vtkOutputWindow()
_out.SetDisplayModeToAlwaysStdErr()
vtk.vtkOutputWindow.SetInstance(_out)

#: A central block of a 2 mm synthetic subject in which every class appears (as test_finetune.py).
ORIGIN, SIZE = (22, 30, 24), (56, 64, 48)


class HeadlessSlicer:
    """A scene with the application and module logic Slicer creates at startup."""

    def __init__(self):
        self.scene = slicer.vtkMRMLScene()
        self.app = slicer.vtkSlicerApplicationLogic()
        self.app.SetMRMLScene(self.scene)
        self.app.GetColorLogic().SetMRMLScene(self.scene)
        self.app.GetColorLogic().AddDefaultColorNodes()
        self.segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
        self.segmentations.SetMRMLScene(self.scene)
        self.segmentations.SetMRMLApplicationLogic(self.app)
        self.app.SetModuleLogic("Segmentations", self.segmentations)

    def load(self, path, name=None, labelmap=False):
        """Reads a NIfTI file with Slicer's own reader (ITK through the volume archetype storage
        node), as File > Add Data does."""
        cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
        node = self.scene.AddNewNodeByClass(cls, name or Path(path).name.split(".")[0])
        storage = self.scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(path))
        assert storage.ReadData(node) == 1, f"Slicer could not read {path}"
        node.SetAndObserveStorageNodeID(storage.GetID())
        return node

    def save(self, node, path):
        """Writes a volume node with Slicer's own writer."""
        storage = self.scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(path))
        assert storage.WriteData(node) == 1, f"Slicer could not write {path}"


@pytest.fixture
def sl():
    return HeadlessSlicer()


def crop_file(src, dst, origin=ORIGIN, size=SIZE, dtype="f32") -> Path:
    """The block at voxel ``origin`` of a NIfTI file, written by asfda to ``dst`` (affine moved so
    world positions stay put)."""
    v = asfda.Volume.load(src)
    a = v.view().reshape(v.dims, order="F")
    block = np.asfortranarray(a[tuple(slice(o, o + s) for o, s in zip(origin, size))])
    shift = np.eye(4)
    shift[:3, 3] = origin
    asfda.Volume.from_array(block, v.affine @ shift).save(dst, dtype)
    return Path(dst)


@pytest.fixture(scope="session")
def crops(tmp_path_factory):
    """Cropped synthetic volumes on disk: pd pool 0-2 and their oracle labels, t1 test 0."""
    d = tmp_path_factory.mktemp("crops")
    out = {f"pd_pool_{i}": crop_file(image("pd", "pool", i), d / f"pd_pool_{i}.nii.gz") for i in range(3)}
    out.update({f"pd_pool_{i}_label": crop_file(label("pd", "pool", i), d / f"pd_pool_{i}_label.nii.gz", dtype="u8")
                for i in range(3)})
    out["t1_test_0"] = crop_file(image("t1", "test", 0), d / "t1_test_0.nii.gz")
    return out


@pytest.fixture(scope="session")
def engine():
    return asfda.Engine(BUNDLE, threads=2)
