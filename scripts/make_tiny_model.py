#!/usr/bin/env python3
"""Builds models/tiny_conv3d/tiny_conv3d.onnx: a tiny, deterministic 3D conv net.

It is the first model the library runs (the real Med-VFM bundle comes later): input `image`
[N, 1, Z, Y, X] float32 (any sizes), Conv3d 1->4 (3x3x3, pad 1) + ReLU, Conv3d 4->2 (1x1x1),
Softmax over channels -> output `probabilities` [N, 2, Z, Y, X]. Weights come from a fixed
seed, so running this script again reproduces the committed file byte for byte.

Usage: python scripts/make_tiny_model.py [output.onnx]
"""
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def build() -> onnx.ModelProto:
    rng = np.random.default_rng(20261125)
    w1 = (rng.standard_normal((4, 1, 3, 3, 3)) * 0.2).astype(np.float32)
    b1 = (rng.standard_normal(4) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((2, 4, 1, 1, 1)) * 0.5).astype(np.float32)
    b2 = np.array([0.1, -0.1], dtype=np.float32)
    # Scale the input so typical MR intensities (0..~30000 in data/anatomical.nii) give non-saturated softmax outputs.
    scale = np.array([1e-4], dtype=np.float32)
    dims = ["N", 1, "Z", "Y", "X"]
    graph = helper.make_graph(
        nodes=[
            helper.make_node("Mul", ["image", "scale"], ["scaled"]),
            helper.make_node("Conv", ["scaled", "w1", "b1"], ["c1"], pads=[1] * 6, kernel_shape=[3, 3, 3]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "w2", "b2"], ["logits"], kernel_shape=[1, 1, 1]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        name="tiny_conv3d",
        inputs=[helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
        outputs=[helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2, "Z", "Y", "X"])],
        initializer=[
            numpy_helper.from_array(a, n)
            for a, n in [(scale, "scale"), (w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2")]
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="asfda")
    model.ir_version = 8  # readable by every ONNX Runtime >= 1.10
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "models" / "tiny_conv3d" / "tiny_conv3d.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(build().SerializeToString())
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
