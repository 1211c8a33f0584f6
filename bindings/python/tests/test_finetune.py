"""asfda.FineTuner over the library's asfda_finetuner_*: the real demo bundle and train step,
on central crops of pd-site pool volumes (one inference tile each, to keep the debug build
quick) with their oracle labels."""
import sys
import threading
import time
from dataclasses import fields

import nibabel as nib
import numpy as np
import pytest

import asfda
from asfda import _lib
from synthetic_data import BUNDLE, dice, image, label

ORIGIN, SIZE = (22, 30, 24), (56, 64, 48)  # as tests/finetune.rs: every class inside


def crop(path, origin=ORIGIN, size=SIZE):
    """The block at voxel ``origin`` (x, y, z) of a NIfTI file as a Volume, its affine moved so
    world positions stay put."""
    img = nib.load(path)
    a = np.asarray(img.dataobj, dtype=np.float32)
    block = a[tuple(slice(o, o + s) for o, s in zip(origin, size))]
    shift = np.eye(4)
    shift[:3, 3] = origin
    return asfda.Volume.from_array(np.asfortranarray(block), img.affine @ shift)


def pair(i):
    return crop(image("pd", "pool", i)), crop(label("pd", "pool", i))


@pytest.fixture(scope="module")
def engine():
    return asfda.Engine(BUNDLE, threads=2)


@pytest.fixture(scope="module")
def pd0():
    return pair(0)


def options(**kw):
    return asfda.FineTuneOptions(**{"patch_size": 32, "batch_size": 2, "total_steps": 10, **kw})


def test_option_defaults_come_from_the_library():
    o, c = asfda.FineTuneOptions(), _lib.finetune_options_default()
    assert o.patch_size is None and o.lr is None and o.weight_decay is None
    for f in fields(o):
        if f.name not in ("patch_size", "lr", "weight_decay"):
            assert getattr(o, f.name) == getattr(c, f.name), f.name
    back = o._to_c()
    assert list(back.patch_size) == [0, 0, 0] and back.lr == 0.0 and back.weight_decay < 0


def test_loss_is_finite_and_falls(engine, pd0):
    tuner = asfda.FineTuner(engine, options(lr=1e-3, seed=1))
    tuner.add_labeled("pd0", *pd0)
    tuner.add_labeled("pd1", *pair(1))
    reports = [tuner.step() for _ in range(10)]
    losses = [r.loss for r in reports]
    print("losses", losses)
    assert all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < np.mean(losses[:4]), losses
    assert [r.step for r in reports] == list(range(1, 11)) and tuner.steps_done == 10
    for r in reports:
        assert isinstance(r, asfda.StepReport)
        assert r.loss == pytest.approx(r.loss_ce + r.loss_dice, rel=1e-5)
        assert (r.labeled_in_batch, r.pseudo_in_batch) == (2, 0)
    # Poly schedule from the given base lr, decreasing.
    assert reports[0].lr == pytest.approx(1e-3) and all(a.lr > b.lr for a, b in zip(reports, reports[1:]))
    # The step releases the GIL: another thread counts while it runs. With the switch interval far
    # above the step's length the interpreter never forces a hand-over, so that thread (which
    # sleeps between counts) can only run while this one has released the GIL itself.
    assert _counts_during(tuner.step) > 0


def _counts_during(call) -> int:
    counter, stop = [0], threading.Event()

    def count():
        while not stop.is_set():
            counter[0] += 1
            time.sleep(0.001)

    old = sys.getswitchinterval()
    t = threading.Thread(target=count, daemon=True)
    t.start()
    time.sleep(0.05)
    sys.setswitchinterval(300.0)
    try:
        before = counter[0]
        call()
        return counter[0] - before
    finally:
        stop.set()
        sys.setswitchinterval(old)
        t.join()


def test_resume_continues_exactly_and_evaluate_apply_export(engine, pd0, tmp_path):
    o = options(seed=11, ramp_fraction=0.5)
    unlabeled = pair(2)[0]
    a = asfda.FineTuner(engine, o)
    a.add_labeled("a-labeled", *pd0)
    kept = a.add_unlabeled("b-pseudo", unlabeled)
    assert 0.0 < kept <= 1.0
    a.step(), a.step()
    a.save_checkpoint(tmp_path / "run.safetensors")
    expected = a.step()

    b = asfda.FineTuner.resume(engine, tmp_path / "run.safetensors")
    assert b.steps_done == 2
    b.add_unlabeled("b-pseudo", unlabeled)  # the other order: sampling goes by id
    b.add_labeled("a-labeled", *pd0)
    assert b.step() == expected  # every field bit-equal (dataclass equality of floats)

    # Evaluate: one Dice per class, in [0, 1]; equal to Dice of the engine after apply().
    dice_b = b.evaluate([pd0])
    assert dice_b.shape == (b.classes,) == (4,) and dice_b.dtype == np.float64
    assert np.all((dice_b >= 0) & (dice_b <= 1))
    adapted = asfda.Engine(BUNDLE, threads=2)
    b.apply_to(adapted)
    pred = adapted.segment(pd0[0]).array()
    truth = pd0[1].array()
    np.testing.assert_allclose(dice_b, [dice(pred, truth, (c,))[0] for c in range(4)], atol=1e-3)

    b.export_bundle(tmp_path / "adapted")
    assert (tmp_path / "adapted" / "manifest.json").is_file() and (tmp_path / "adapted" / "model.onnx").is_file()
    with pytest.raises(asfda.Error, match="already exists"):
        b.export_bundle(tmp_path / "adapted")


def test_pseudo_labels_are_checked_against_the_annotations(engine, pd0):
    """The unadapted model on pd (Dice ~0.1) fails the default check: no pseudo-labelled patch
    is drawn; with the check at its measured Dice the same pseudo-labels are used."""
    assert asfda.FineTuneOptions().pseudo_label_min_dice == 0.5
    tuner = asfda.FineTuner(engine, options(seed=4))
    with pytest.raises(asfda.InvalidArgumentError, match="annotated volume"):
        tuner.check_pseudo_labels()
    tuner.add_labeled("a", *pd0)
    tuner.add_unlabeled("u", pair(2)[0])
    check = tuner.check_pseudo_labels()
    assert isinstance(check, asfda.PseudoLabelCheck)
    assert check.dice.shape == (4,) and np.all((check.dice >= 0) & (check.dice <= 1))
    assert check.foreground_dice == pytest.approx(check.dice[1:].mean(), abs=1e-12)
    # The engine's own segmentation on the caller's grid agrees with the model-grid check (this
    # crop is on the model's 2 mm grid, so only padding differs).
    pred = engine.segment(pd0[0]).array()
    by_hand = np.mean([dice(pred, pd0[1].array(), (c,))[0] for c in (1, 2, 3)])
    assert check.foreground_dice == pytest.approx(by_hand, abs=0.02)
    assert not check.trusted and check.foreground_dice < 0.5
    assert all(tuner.step().pseudo_in_batch == 0 for _ in range(3))

    lenient = asfda.FineTuner(engine, options(seed=4, pseudo_label_min_dice=check.foreground_dice))
    lenient.add_labeled("a", *pd0)
    lenient.add_unlabeled("u", pair(2)[0])
    assert lenient.check_pseudo_labels().trusted
    assert sum(lenient.step().pseudo_in_batch for _ in range(10)) > 0
    with pytest.raises(asfda.InvalidArgumentError, match="pseudo_label_min_dice"):
        asfda.FineTuner(engine, pseudo_label_min_dice=1.5)


def test_bad_inputs_raise_the_right_exceptions(engine, pd0, tmp_path):
    img, lab = pd0
    tuner = asfda.FineTuner(engine, options())
    with pytest.raises(asfda.InvalidArgumentError, match="annotated volume"):
        tuner.step()
    bad = lab.array()
    bad[10, 10, 10] = 7
    with pytest.raises(asfda.InvalidDataError, match="value 7"):
        tuner.add_labeled("bad", img, asfda.Volume.from_array(bad, lab.affine))
    shifted = lab.affine.copy()
    shifted[0, 3] += 2.0
    with pytest.raises(asfda.GeometryMismatchError):
        tuner.add_labeled("s", img, asfda.Volume.from_array(lab.array(), shifted))
    tuner.add_labeled("ok", img, lab)
    with pytest.raises(asfda.InvalidArgumentError, match="already added"):
        tuner.add_labeled("ok", img, lab)
    with pytest.raises(ValueError, match="at least one"):
        tuner.evaluate([])

    for kw in [dict(batch_size=0), dict(pseudo_label_threshold=1.5), dict(patch_size=(30, 32, 32))]:
        with pytest.raises(asfda.InvalidArgumentError):
            asfda.FineTuner(engine, **kw)
    for kw in [dict(lr=-1.0), dict(patch_size=(32, 32)), dict(batch_size=-1), dict(weight_decay=float("nan"))]:
        with pytest.raises(ValueError):  # caught in Python: the C sentinels would misread them
            asfda.FineTuner(engine, **kw)
    with pytest.raises(TypeError, match="asfda.Engine"):
        asfda.FineTuner("models/demo_brain_unet")

    with pytest.raises(asfda.IoError):
        asfda.FineTuner.resume(engine, tmp_path / "missing.safetensors")
    tuner.save_checkpoint(tmp_path / "good.safetensors")
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(asfda.FormatError):
        asfda.FineTuner.resume(engine, tmp_path / "truncated.safetensors")
    with pytest.raises(asfda.InvalidDataError, match="not an asfda fine-tuning checkpoint"):
        asfda.FineTuner.resume(engine, BUNDLE / "checkpoint.safetensors")
    assert asfda.FineTuner.resume(engine, tmp_path / "good.safetensors").steps_done == 0
