"""The train-step ONNX graph, run by onnxruntime (CPU), against PyTorch autograd and AdamW.

A tiny U-Net (4 levels, 2..16 channels) keeps the suite fast on 2 cores; the graph is the same
op for op as for a full-size one.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from asfda_tools.trainstep import (TrainStepConfig, _conv_backward, dice_ce, example_inputs,
                                   export_train_step, io_names)

CONFIG = TrainStepConfig(foreground_classes=[1, 2])
B1 = CONFIG.betas[0]


@pytest.fixture(scope="module")
def graph(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("trainstep") / "train_step.onnx"
    export_train_step(model, path, CONFIG)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return path, ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(model, session, args):
    inputs, outputs = io_names(model, CONFIG)
    values = session.run(outputs, {k: np.asarray(v) for k, v in zip(inputs, args)})
    return dict(zip(outputs, values))


def names(model):
    return [n for n, _ in model.named_parameters()]


def batch(model, n, spatial, seed=1):
    """Graph inputs at step 1 with zero moments (so new.m = (1 - beta1) * gradient)."""
    return example_inputs(model, CONFIG, n, spatial, seed=seed)


def torch_grads(model, image, labels, weight):
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    logits = torch.func.functional_call(model, params, (image,))[0]
    loss = dice_ce(logits, labels, weight, foreground_classes=CONFIG.foreground_classes,
                   ignore_label=CONFIG.ignore_label)[0]
    return loss.item(), torch.autograd.grad(loss, list(params.values()))


def ort_grads(model, out):
    return [torch.from_numpy(out[f"new.m.{n}"]).double() / (1 - B1) for n in names(model)]


def rel_err(a, b):
    a = torch.cat([t.double().flatten() for t in a])
    b = torch.cat([t.double().flatten() for t in b])
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("cin, cout, k, stride, pad, transposed, spatial", [
    (3, 5, 3, 1, 1, False, (6, 10, 8)),   # stride 1, fewer input channels: the input is shifted
    (5, 3, 3, 1, 1, False, (6, 10, 8)),   # stride 1, fewer output channels: grad_output shifted
    (1, 4, 3, 1, 1, False, (8, 8, 8)),    # the first layer (one image channel)
    (4, 2, 1, 1, 0, False, (6, 4, 8)),    # 1x1 head
    (2, 3, 3, 1, 0, False, (7, 9, 8)),    # stride 1 without padding
    (3, 4, 3, 2, 1, False, (8, 12, 10)),  # stride-2 downsampling
    (4, 3, 2, 2, 0, False, (8, 6, 10)),   # k2 s2 conv
    (4, 3, 2, 2, 0, True, (4, 3, 5)),     # the U-Net's upsampling ConvTranspose
    (3, 2, 3, 1, 1, True, (5, 4, 6)),     # stride-1 transposed conv
])
@pytest.mark.parametrize("mode", ["conv", "gemm"])
def test_conv_backward_decomposition(mode, cin, cout, k, stride, pad, transposed, spatial):
    """The decomposition of aten.convolution_backward (run eagerly, f64) equals PyTorch's own
    input and weight gradients for every layer kind of the U-Net and a few more."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, cin, *spatial, generator=gen, dtype=torch.float64)
    w = torch.randn(*((cin, cout) if transposed else (cout, cin)), k, k, k, generator=gen,
                    dtype=torch.float64)
    conv = ([stride] * 3, [pad] * 3, [1] * 3, transposed, [0] * 3, 1)
    y = torch.ops.aten.convolution(x, w, None, *conv)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    want = torch.ops.aten.convolution_backward(g, x, w, None, *conv, [True, True, False])
    got = _conv_backward(g, x, w, None, *conv, [True, True, False], weight_grad=mode)
    for a, b in zip(got[:2], want[:2]):
        assert a.shape == b.shape
        assert ((a - b).abs().max() / b.abs().max()).item() < 1e-12


def test_graph_is_standard_ops(graph):
    g = onnx.load(str(graph[0]))
    assert {n.domain for n in g.graph.node} <= {"", "ai.onnx"}
    assert not g.graph.initializer or all(np.prod(i.dims) < 100 for i in g.graph.initializer)
    ops = sorted({n.op_type for n in g.graph.node})
    assert "Conv" in ops and "ConvTranspose" in ops
    print(len(ops), "op types:", " ".join(ops))


@pytest.mark.parametrize("n, size, tol", [(2, 16, 1e-5), (2, 64, 1e-3)])
def test_gradients_match_autograd(model, graph, n, size, tol):
    """Global relative error of all gradients. (A pre-activation within f32 rounding of 0 may
    take the other LeakyReLU branch in ORT than in PyTorch; one such voxel alone moves the error
    to about 1/sqrt(voxels). The seeded batches here have none.)"""
    args = batch(model, n, (size,) * 3)
    out = run(model, graph[1], args)
    loss, grads = torch_grads(model, *args[:3])
    assert out["loss"] == pytest.approx(loss, rel=1e-5)
    assert out["loss"] == pytest.approx(out["loss_ce"] + out["loss_dice"], rel=1e-6)
    assert rel_err(ort_grads(model, out), grads) < tol


@pytest.mark.slow
def test_gemm_weight_gradients(model, tmp_path):
    """weight_grad="gemm": weight gradients are MatMuls, not convolutions with a
    grad_output-sized kernel (the only Conv/ConvTranspose nodes are the forward pass and the
    input gradients, <= 2 per layer), and all gradients still match autograd."""
    path = tmp_path / "train_step_gemm.onnx"
    export_train_step(model, path, CONFIG, weight_grad="gemm")
    g = onnx.load(str(path))
    assert {n.domain for n in g.graph.node} <= {"", "ai.onnx"}
    layers = sum(len(i.type.tensor_type.shape.dim) == 5 for i in g.graph.input
                 if i.name.startswith("param."))  # conv and transposed-conv weights
    assert sum(n.op_type in ("Conv", "ConvTranspose") for n in g.graph.node) <= 2 * layers
    assert any(n.op_type == "MatMul" for n in g.graph.node)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for n, spatial in [(2, (16, 16, 16)), (3, (8, 16, 24))]:
        args = batch(model, n, spatial)
        out = run(model, session, args)
        loss, grads = torch_grads(model, *args[:3])
        assert out["loss"] == pytest.approx(loss, rel=1e-5)
        assert rel_err(ort_grads(model, out), grads) < 1e-5


def test_dynamic_shapes(model, graph):
    """Other batch and (non-cubic) spatial sizes than the other tests, in the same session."""
    for n, spatial in [(3, (8, 16, 24)), (1, (24, 8, 16))]:
        args = batch(model, n, spatial)
        out = run(model, graph[1], args)
        loss, grads = torch_grads(model, *args[:3])
        assert out["loss"] == pytest.approx(loss, rel=1e-5)
        assert rel_err(ort_grads(model, out), grads) < 1e-5


def test_ignore_label(model, graph):
    """A slab labelled with the ignore value must count exactly as if it were not there: the
    graph's loss and gradients equal autograd's on the volume without the slab."""
    args = batch(model, 2, (16, 16, 16))
    args[1][:, :5] = CONFIG.ignore_label
    out = run(model, graph[1], args)
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    logits = torch.func.functional_call(model, params, (args[0],))[0]
    loss = dice_ce(logits[:, :, 5:], args[1][:, 5:], args[2], ignore_label=CONFIG.ignore_label,
                   foreground_classes=CONFIG.foreground_classes)[0]
    grads = torch.autograd.grad(loss, list(params.values()))
    assert out["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert rel_err(ort_grads(model, out), grads) < 1e-5


def test_loss_weight(model, graph):
    """loss = sum_n w_n loss_n / N: weight 0 removes a sample, whatever its image holds."""
    args = batch(model, 2, (16, 16, 16))
    args[2] = torch.tensor([1.0, 0.0])
    pair = run(model, graph[1], args)
    single = run(model, graph[1], [args[0][:1], args[1][:1], torch.tensor([0.5])] + args[3:])
    assert pair["loss"] == pytest.approx(single["loss"], rel=1e-6)
    assert rel_err(ort_grads(model, pair), ort_grads(model, single)) < 1e-6


def adamw_reference(params, grads, state, steps_done, lr, weight_decay):
    """torch.optim.AdamW's step from the given moments; returns (params, m, v) lists."""
    params = [p.detach().clone().requires_grad_() for p in params]
    opt = torch.optim.AdamW(params, lr=lr, betas=CONFIG.betas, eps=CONFIG.eps,
                            weight_decay=weight_decay)
    for p, g, (m, v) in zip(params, grads, state):
        p.grad = g.clone()
        opt.state[p] = {"step": torch.tensor(float(steps_done)), "exp_avg": m.clone(),
                        "exp_avg_sq": v.clone()}
    opt.step()
    return ([p.detach() for p in params], [opt.state[p]["exp_avg"] for p in params],
            [opt.state[p]["exp_avg_sq"] for p in params])


def new_state(model, out):
    return [[torch.from_numpy(out[f"new.{k}.{n}"]) for n in names(model)]
            for k in ("param", "m", "v")]


def test_zero_gradient_steps(model, graph):
    """loss_weight 0 gives an exactly-zero gradient and v = 0: only AdamW's eps keeps the update
    finite (the exporter's optimiser would delete it). Two steps, fed back as the Rust side does."""
    args = batch(model, 2, (16, 16, 16))
    args[2] = torch.zeros(2)
    lr, wd = 1e-3, 1e-2
    args[3:6] = [torch.tensor(lr), torch.tensor(1.0), torch.tensor(wd)]
    want = list(model.parameters())
    zero = [torch.zeros_like(p) for p in want]
    for step in (1, 2):
        out = run(model, graph[1], args)
        assert out["loss"] == 0.0
        params, ms, vs = new_state(model, out)
        assert all(torch.isfinite(p).all() for p in params)
        assert all((m == 0).all() and (v == 0).all() for m, v in zip(ms, vs))
        want = adamw_reference(want, zero, list(zip(zero, zero)), step - 1, lr, wd)[0]
        assert rel_err(params, want) < 1e-7
        args[4] = torch.tensor(float(step + 1))
        args[6:] = params + ms + vs


def test_adamw_matches_torch(model, graph):
    """A normal step from non-zero moments at step 3 (bias correction matters)."""
    gen = torch.Generator().manual_seed(3)
    args = batch(model, 2, (16, 16, 16))
    lr, wd = 2e-3, 5e-2
    state = [(torch.randn(p.shape, generator=gen) * 1e-2, torch.rand(p.shape, generator=gen) * 1e-4)
             for p in model.parameters()]
    k = len(state)
    args[3:6] = [torch.tensor(lr), torch.tensor(3.0), torch.tensor(wd)]
    args[6 + k:] = [m for m, _ in state] + [v for _, v in state]
    out = run(model, graph[1], args)
    _, grads = torch_grads(model, *args[:3])
    ref = adamw_reference(model.parameters(), grads, state, 2, lr, wd)
    for got, want in zip(new_state(model, out), ref):
        assert rel_err(got, want) < 1e-6
    # The update itself (not only the parameters it is added to) agrees too.
    delta = [a - p.detach() for a, p in zip(new_state(model, out)[0], model.parameters())]
    want = [a - p.detach() for a, p in zip(ref[0], model.parameters())]
    assert rel_err(delta, want) < 1e-4


def test_consecutive_steps_match_pytorch(model, graph):
    """Five steps, each fed the previous step's outputs, reproduce eager PyTorch's losses."""
    from asfda_tools.export import reference_losses
    args = batch(model, 2, (16, 16, 16))
    lr, wd = 1e-2, 1e-2
    want = reference_losses(model, tuple(args[:3]), CONFIG, steps=5, lr=lr, weight_decay=wd)
    got = []
    args[3], args[5] = torch.tensor(lr), torch.tensor(wd)
    for step in range(1, 6):
        args[4] = torch.tensor(float(step))
        out = run(model, graph[1], args)
        got.append(float(out["loss"]))
        args[6:] = [x for kind in new_state(model, out) for x in kind]
    assert got[-1] < got[0]
    np.testing.assert_allclose(got, want["loss"], rtol=1e-5)
