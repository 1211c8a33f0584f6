"""The README's Python example, verbatim (tests/readme.rs checks that they agree): score a few
target-site volumes, pick the most informative one, fine-tune on its annotation, evaluate.
Run from the repository root after `make data`:  python bindings/python/examples/quickstart.py"""
import asfda

pool, labels = ".cache/data/synthetic-v1/pd/pool/", ".cache/data/synthetic-v1/pd/pool_labels/"
engine = asfda.Engine("models/demo_brain_unet", tile_overlap=0.25)

ids = ["pd_pool_000", "pd_pool_001", "pd_pool_002"]
images = {i: asfda.Volume.load(f"{pool}{i}_image.nii.gz") for i in ids}
scores = [engine.score(i, images[i]) for i in ids]
for s in scores:
    print(f"{s.id}  knowledge gap {s.gap_kl:.3f}  ASD {s.asd:.3f}")

selection = asfda.select(scores, budget=1)
pick = selection.picks[0]
print(f"annotate first: {pick.id} (combined score {pick.combined:.2f})")

tuner = asfda.FineTuner(engine, patch_size=32, lr=1e-3, total_steps=4)
label = asfda.Volume.load(f"{labels}{pick.id}_label.nii.gz")
tuner.add_labeled(pick.id, images[pick.id], label)
for _ in range(4):
    print(f"step {tuner.steps_done + 1}  loss {tuner.step().loss:.3f}")

dice = tuner.evaluate([(images[pick.id], label)])
print(f"Dice on the annotated volume: gm {dice[2]:.3f}, wm {dice[3]:.3f}")
tuner.apply_to(engine)  # the engine now segments with the adapted weights
