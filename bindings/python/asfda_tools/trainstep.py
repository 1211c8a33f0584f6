"""The train-step ONNX graph: one DiceCE + AdamW step of a segmentation model in standard ops.

ORT builds from a registry have no training API, so one whole optimiser step (forward, backward,
AdamW) is traced into a plain inference graph that any ORT session runs (see
docs/fine-tuning.md). Pipeline: ``torch.func.grad_and_value`` -> ``make_fx`` (symbolic,
with ``aten.convolution_backward``, which the ONNX exporter lacks, decomposed into ordinary
convolutions, or with ``weight_grad="gemm"`` its weight gradients into Slice + MatMul; see
docs/bench-train-step.md) -> ``torch.export`` with dynamic batch and spatial sizes -> ``torch.onnx.export``
(``optimize=False``: the optimiser deletes AdamW's ``+ eps``).

Graph inputs: ``image`` [N,C,Z,Y,X] f32, ``labels`` [N,Z,Y,X] i64, ``loss_weight`` [N] f32,
scalars ``lr``, ``step`` (1-based index of the step being taken: the checkpoint's step + 1),
``weight_decay`` (f32), then ``param.<name>`` for every parameter and ``m.<name>``, ``v.<name>``
for every trainable one. Outputs: ``loss``, ``loss_ce``, ``loss_dice``, then ``new.param.<name>``,
``new.m.<name>``, ``new.v.<name>`` for every trainable parameter.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field

import torch
from torch._dynamo.source import ConstantSource
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.export import Dim
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import ShapeEnv

aten = torch.ops.aten

IO_SCALARS = ("lr", "step", "weight_decay")
LOSS_OUTPUTS = ("loss", "loss_ce", "loss_dice")


@dataclass
class TrainStepConfig:
    foreground_classes: list[int]
    ignore_label: int = 255
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    dice_smooth: float = 1e-5
    frozen: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Loss and optimiser (plain torch: traced into the graph, and used eagerly by the reference)

def dice_ce(logits, labels, loss_weight, *, foreground_classes, ignore_label, smooth=1e-5):
    """DiceCE = CE + (1 - soft Dice over the foreground classes), per sample, then
    sum_n loss_weight[n] * loss_n / N. Voxels labelled ``ignore_label`` count in neither term.
    Returns (loss, ce_part, dice_part) with loss = ce_part + dice_part."""
    n, c = logits.shape[:2]
    valid = labels != ignore_label
    target = torch.where(valid, labels, torch.zeros_like(labels))
    classes = torch.arange(c, device=logits.device).view(1, c, 1, 1, 1)
    mask = valid.unsqueeze(1).to(logits.dtype)
    onehot = (target.unsqueeze(1) == classes).to(logits.dtype) * mask
    logp = torch.log_softmax(logits, dim=1)
    count = mask.sum(dim=(1, 2, 3, 4))
    ce = -(onehot * logp).sum(dim=(1, 2, 3, 4)) / count.clamp(min=1.0)
    p = logp.exp() * mask
    inter = (p * onehot).sum(dim=(2, 3, 4))
    denom = p.sum(dim=(2, 3, 4)) + onehot.sum(dim=(2, 3, 4))
    # A 0/1 class mask instead of indexing keeps Gather/Scatter out of the graph.
    fg = torch.tensor([float(i in foreground_classes) for i in range(c)], dtype=logits.dtype,
                      device=logits.device)
    dice = (((2 * inter + smooth) / (denom + smooth)) * fg).sum(dim=1) / len(foreground_classes)
    ce_part = (loss_weight * ce).sum() / n
    dice_part = (loss_weight * (1 - dice)).sum() / n
    return ce_part + dice_part, ce_part, dice_part


def adamw(p, g, m, v, lr, step, weight_decay, betas, eps):
    """torch.optim.AdamW's update (decoupled decay, bias correction), with step 1-based."""
    b1, b2 = betas
    p = p * (1 - lr * weight_decay)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    bc1 = 1 - b1 ** step
    bc2 = 1 - b2 ** step
    # ``+ eps`` keeps an exactly-zero gradient (v = 0) finite: the exporter must keep it.
    p = p - (lr / bc1) * m / (torch.sqrt(v) / torch.sqrt(bc2) + eps)
    return p, m, v


# ---------------------------------------------------------------------------------------------
# aten.convolution_backward in terms of aten.convolution

def _tr(t):
    return t.transpose(0, 1)


def _weight_grad(a, b, k, stride, padding, dilation):
    """``out[i, j, kk] = sum over n, o of a[n, i, o] * pad(b)[n, j, stride * o + dilation * kk]``
    for every kernel offset ``kk``: the weight gradient of a conv (a = grad_output, b = input,
    result [Cout, Cin, *k]) and of a transposed conv (a = input, b = grad_output, result
    [Cin, Cout, *k]), with ``o`` running over a's spatial positions.

    One batched MatMul per kernel offset, [N, A, O] @ [N, O, B], on a strided Slice of b made
    channel-last once. Used for strided and transposed convs, whose offsets read disjoint or
    few-times-overlapping parts of b (stride 1 goes through _weight_grad_stride1). The textbook
    form, a convolution whose kernel is the whole grad_output, is what ORT's Conv handles worst
    (a 3D im2col over a 64^3 kernel: seconds per layer)."""
    nd = len(k)
    n, ca, cb = a.shape[0], a.shape[1], b.shape[1]
    out_sizes = a.shape[2:]
    # Pad spatial dims (innermost first, as F.pad wants) after moving channels last.
    bl = b.permute(0, *range(2, 2 + nd), 1)
    bl = aten.constant_pad_nd(bl, [0, 0] + [q for i in reversed(range(nd)) for q in
                                           (padding[i], padding[i])], 0.0)
    am = a.reshape(n, ca, -1)
    cols = []
    for kk in itertools.product(*(range(ki) for ki in k)):
        view = bl
        for i in range(nd):
            start = dilation[i] * kk[i]
            view = aten.slice(view, 1 + i, start, start + stride[i] * (out_sizes[i] - 1) + 1,
                              stride[i])
        # bmm, not matmul: matmul's decomposition adds Expand nodes that copy both operands.
        cols.append(torch.bmm(am, view.reshape(n, -1, cb)).sum(dim=0))
    return torch.stack(cols, dim=-1).reshape(ca, cb, *k)


def _weight_grad_stride1(grad_output, input, k, padding):
    """Weight gradient [Cout, Cin, *k] of a stride-1, dilation-1 conv, as GEMMs on flat shifts.

    In the padded input grid flattened row-major, kernel offset ``kk`` is a constant shift
    ``off`` of the flat index, so with grad_output embedded in that grid (zeros elsewhere),
    ``gw[:, :, kk] = sum_q dY[:, q] * X[:, q + off]``: a MatMul of a contiguous Slice of one
    operand (the one with fewer channels, made [N, C, L], so the slice is one run per channel)
    with the other made channel-last [N, L, C'] once. The flat axis is cut into chunks so each
    slice stays cache-sized between the Slice that writes it and the MatMul that reads it
    (about 2x faster than unchunked on a 64^3 layer). Cost: ~27 copies of the smaller operand,
    which are what ORT's im2col would make too, but as long memcpy runs."""
    nd = len(k)
    n, cout, cin = grad_output.shape[0], grad_output.shape[1], input.shape[1]
    grid = [input.shape[2 + i] + 2 * padding[i] for i in range(nd)]
    strides = [1] * nd
    for i in reversed(range(nd - 1)):
        strides[i] = strides[i + 1] * grid[i + 1]
    size = strides[0] * grid[0]
    offsets = [sum(kk[i] * strides[i] for i in range(nd))
               for kk in itertools.product(*(range(ki) for ki in k))]
    flat_pads = lambda per_dim: [q for i in reversed(range(nd)) for q in per_dim(i)]  # noqa: E731
    x = aten.constant_pad_nd(input, flat_pads(lambda i: (padding[i], padding[i])), 0.0)
    x = x.reshape(n, cin, size)
    # grad_output at the low corner of the padded grid: position q pairs with input q + off.
    dy = aten.constant_pad_nd(grad_output, flat_pads(lambda i: (0, k[i] - 1)), 0.0)
    dy = dy.reshape(n, cout, size)
    if cin <= cout:
        # Shift the input: q runs over [0, size - max offset), past dY's last voxel.
        length = size - offsets[-1]
        shifted, starts, fixed = x, offsets, dy.transpose(1, 2)  # fixed [N, size, Cout]
    else:
        # Shift grad_output the other way: prepend max-offset zeros; q runs over the grid.
        length = size
        shifted = aten.constant_pad_nd(dy, [offsets[-1], 0], 0.0)
        starts = [offsets[-1] - o for o in offsets]
        fixed = x.transpose(1, 2)  # [N, size, Cin]
    # Fewer channels -> bigger volume in this U-Net: more chunks (by channels, as the spatial
    # sizes are symbolic; 4 chunks of a 64^3 16-channel layer run ~1.4x faster than 1, 16 only
    # a little faster than 4 but trace for far longer). One offset (1x1 conv): nothing to reuse.
    chunks = 1 if len(offsets) == 1 else max(1, min(4, 64 // shifted.shape[1]))
    step = length // chunks  # one floor division keeps the symbolic bounds cheap to trace
    bounds = [step * c for c in range(chunks)] + [length]
    total = None
    for c in range(chunks):
        lo, hi = bounds[c], bounds[c + 1]
        f = aten.slice(fixed, 1, lo, hi)
        part = torch.stack([torch.bmm(aten.slice(shifted, 2, s + lo, s + hi), f)
                            for s in starts], dim=1)  # [N, offsets, C_shifted, C_fixed]
        total = part if total is None else total + part
    total = total.sum(dim=0)
    # -> [Cout, Cin, offsets]
    total = total.permute(2, 1, 0) if cin <= cout else total.permute(1, 2, 0)
    return total.reshape(cout, cin, *k)


WEIGHT_GRAD_MODES = ("conv", "gemm")


def _conv_backward(grad_output, input, weight, bias_sizes, stride, padding, dilation,
                   transposed, output_padding, groups, output_mask, weight_grad="conv"):
    if groups != 1:
        raise NotImplementedError("convolution_backward decomposition supports groups == 1")
    nd = weight.dim() - 2
    k = weight.shape[2:]
    no_pad = [0] * nd
    gi = gw = gb = None
    if output_mask[0]:
        if transposed:
            # Adjoint of a transposed conv is the plain conv with the same weight; it returns
            # exactly the input size because output_padding < stride.
            gi = aten.convolution(grad_output, weight, None, stride, padding, dilation,
                                  False, no_pad, 1)
        elif all(st == 1 for st in stride):
            # Stride 1: the adjoint is a plain conv with the flipped, in/out-swapped kernel,
            # which ORT's CPU Conv runs faster than ConvTranspose.
            flipped = _tr(weight).flip(list(range(2, 2 + nd)))
            pad = [dilation[i] * (k[i] - 1) - padding[i] for i in range(nd)]
            gi = aten.convolution(grad_output, flipped, None, stride, pad, dilation,
                                  False, no_pad, 1)
        else:
            # output_padding restores the rows the forward's floor division dropped. The input
            # sizes are symbolic multiples of the U-Net's divisor (see _symbolic_batch), so this
            # is a constant, not a guess from the example sizes.
            op = [int((input.shape[2 + i] + 2 * padding[i] - dilation[i] * (k[i] - 1) - 1)
                      % stride[i]) for i in range(nd)]
            gi = aten.convolution(grad_output, weight, None, stride, padding, dilation,
                                  True, op, 1)
    if output_mask[1] and weight_grad == "conv":
        # Correlate input with grad_output over the batch: batch and channels swap roles,
        # stride and dilation swap, and the result is cropped to the kernel size. ORT's Conv
        # runs this (a kernel as large as grad_output) slowly; see "gemm" and
        # docs/bench-train-step.md for why it is still the default.
        if transposed:
            gw = aten.convolution(_tr(grad_output), _tr(input), None, dilation, padding, stride,
                                  False, no_pad, 1)
        else:
            gw = aten.convolution(_tr(input), _tr(grad_output), None, dilation, padding, stride,
                                  False, no_pad, 1)
        gw = _tr(gw[(slice(None), slice(None)) + tuple(slice(0, ki) for ki in k)])
    elif output_mask[1]:
        if transposed:
            # y[s*i + d*k - p] += x[i] * w[k]: the same correlation with the roles swapped.
            gw = _weight_grad(input, grad_output, k, stride, padding, dilation)
        elif all(st == 1 for st in stride) and all(d == 1 for d in dilation):
            gw = _weight_grad_stride1(grad_output, input, k, padding)
        else:
            gw = _weight_grad(grad_output, input, k, stride, padding, dilation)
    if output_mask[2]:
        gb = grad_output.sum(dim=[0] + list(range(2, grad_output.dim())))
    return gi, gw, gb


def decomposition_table(weight_grad: str = "conv"):
    """Core ATen decompositions plus aten.convolution_backward in ordinary ops; weight_grad
    picks how weight gradients are formed: "conv" (one Conv per layer whose kernel is the
    whole grad_output) or "gemm" (MatMuls over Slices per kernel offset)."""
    if weight_grad not in WEIGHT_GRAD_MODES:
        raise ValueError(f"weight_grad must be one of {WEIGHT_GRAD_MODES}, got {weight_grad!r}")
    table = torch._decomp.core_aten_decompositions()
    table[aten.convolution_backward.default] = functools.partial(_conv_backward,
                                                                 weight_grad=weight_grad)
    return table


# ---------------------------------------------------------------------------------------------
# The graph

def parameter_names(model, config: TrainStepConfig):
    """(all parameter names, trainable names), in ``named_parameters`` order."""
    names = [n for n, _ in model.named_parameters()]
    unknown = set(config.frozen) - set(names)
    if unknown:
        raise ValueError(f"frozen names that are not parameters: {sorted(unknown)}")
    return names, [n for n in names if n not in set(config.frozen)]


def io_names(model, config: TrainStepConfig):
    """(input names, output names) of the train-step graph, in graph order."""
    names, train = parameter_names(model, config)
    inputs = (["image", "labels", "loss_weight", *IO_SCALARS] + [f"param.{n}" for n in names]
              + [f"m.{n}" for n in train] + [f"v.{n}" for n in train])
    outputs = list(LOSS_OUTPUTS) + [f"new.{k}.{n}" for k in ("param", "m", "v") for n in train]
    return inputs, outputs


def make_step_fn(model, config: TrainStepConfig):
    """A function of the flat graph inputs returning the flat graph outputs."""
    names, train = parameter_names(model, config)
    frozen = [n for n in names if n not in set(train)]
    np_, nt = len(names), len(train)

    def step_fn(image, labels, loss_weight, lr, step, weight_decay, *state):
        params = dict(zip(names, state[:np_]))
        ms, vs = state[np_:np_ + nt], state[np_ + nt:]

        def loss_fn(trainable):
            logits, _ = torch.func.functional_call(
                model, {**trainable, **{n: params[n] for n in frozen}}, (image,))
            loss, ce, dice = dice_ce(logits, labels, loss_weight,
                                     foreground_classes=config.foreground_classes,
                                     ignore_label=config.ignore_label, smooth=config.dice_smooth)
            return loss, (ce, dice)

        grads, (loss, (ce, dice)) = torch.func.grad_and_value(loss_fn, has_aux=True)(
            {n: params[n] for n in train})
        new = [adamw(params[n], grads[n], m, v, lr, step, weight_decay, config.betas, config.eps)
               for n, m, v in zip(train, ms, vs)]
        return (loss, ce, dice, *[u[0] for u in new], *[u[1] for u in new], *[u[2] for u in new])

    return step_fn


def _example_sizes(model, divisor: int):
    """Example batch and spatial sizes for tracing: distinct from each other, from 1 and from
    every parameter dimension, or symbolic tracing would specialise or merge them (trap 3)."""
    taken = {1} | {d for p in model.parameters() for d in p.shape}
    sizes = []
    for i in range(2, 1000):
        if i not in taken and i * divisor not in taken:
            sizes.append(i)
            taken |= {i, i * divisor}
        if len(sizes) == 4:
            return sizes[0], [k * divisor for k in sizes[1:]]


def example_inputs(model, config: TrainStepConfig, n: int, spatial, seed: int = 0):
    """Flat graph inputs: a random batch, the model's parameters, zero moments, step 1."""
    gen = torch.Generator().manual_seed(seed)
    names, train = parameter_names(model, config)
    image = torch.randn(n, model.in_channels, *spatial, generator=gen)
    labels = torch.randint(0, model.num_classes, (n, *spatial), generator=gen)
    params = dict(model.named_parameters())
    # Distinct zero tensors: make_fx merges inputs that are the same object (trap 2).
    return ([image, labels, torch.ones(n), torch.tensor(1e-3), torch.tensor(1.0),
             torch.tensor(1e-2)]
            + [params[k].detach().clone() for k in names]
            + [torch.zeros_like(params[k]) for k in train]
            + [torch.zeros_like(params[k]) for k in train])


def _symbolic_batch(args, divisor: int):
    """Fake copies of ``args`` whose batch and spatial sizes are symbols N and divisor * S:
    knowing the divisibility keeps the U-Net's shape formulas simple (tracing ~20x faster than
    plain ``tracing_mode="symbolic"``, which must reason about nested floor divisions), and
    makes the output_padding of every gradient convolution provably constant. The remaining
    inputs (parameters, moments, scalars) have static shapes."""
    env = ShapeEnv(duck_shape=False)  # equal example sizes must not become one symbol
    mode = FakeTensorMode(shape_env=env)

    def sym(value, name):
        src = ConstantSource(name)
        return env.create_symintnode(env.create_symbol(value, src), hint=value, source=src)

    image, labels = args[0], args[1]
    n = sym(image.shape[0], "batch")
    spatial = [divisor * sym(s // divisor, a) for s, a in zip(image.shape[2:], "zyx")]
    with mode:
        head = [torch.empty(n, image.shape[1], *spatial),
                torch.empty(n, *spatial, dtype=labels.dtype), torch.empty(n)]
    return head + [mode.from_tensor(a, static_shapes=True) for a in args[3:]]


def export_train_step(model, path, config: TrainStepConfig, *, divisor: int | None = None,
                      weight_grad: str = "conv"):
    """Write the train-step ONNX graph of ``model`` to ``path``; returns (inputs, outputs).
    ``weight_grad``: see decomposition_table."""
    model = model.eval()  # no dropout / running stats; the U-Net's norms are per instance anyway
    divisor = divisor or getattr(model, "size_divisible_by", 1)
    n, spatial = _example_sizes(model, divisor)
    args = tuple(example_inputs(model, config, n, spatial))
    inputs, outputs = io_names(model, config)
    gm = make_fx(make_step_fn(model, config), tracing_mode="symbolic",
                 decomposition_table=decomposition_table(weight_grad))(
        *_symbolic_batch(args, divisor))
    batch = Dim("batch", min=1)
    z, y, x = (divisor * Dim(f"{a}_div{divisor}", min=1) for a in "zyx")
    dyn = ({0: batch, 2: z, 3: y, 4: x}, {0: batch, 1: z, 2: y, 3: x}, {0: batch})
    ep = torch.export.export(gm, args, dynamic_shapes=dyn + (None,) * (len(args) - 3),
                             strict=False)
    save_onnx(torch.onnx.export(ep, (), dynamo=True, optimize=False, verbose=False,
                                input_names=inputs, output_names=outputs), path)
    return inputs, outputs


def save_onnx(program, path):
    """Save an exported ONNX program without the exporter's per-node debug metadata (FX node
    text, stack traces), which is most of the file and not needed to run it."""
    for node in program.model.graph.all_nodes():
        node.metadata_props.clear()
    program.save(str(path), external_data=False)
