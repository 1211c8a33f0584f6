"""The train-step ONNX graph: one DiceCE + AdamW step of a segmentation model in standard ops.

ORT builds from a registry have no training API, so one whole optimiser step (forward, backward,
AdamW) is traced into a plain inference graph that any ORT session runs (see
shared/design/fine-tuning.md). Pipeline: ``torch.func.grad_and_value`` -> ``make_fx`` (symbolic,
with ``aten.convolution_backward`` decomposed into ordinary convolutions, which the ONNX exporter
lacks) -> ``torch.export`` with dynamic batch and spatial sizes -> ``torch.onnx.export``
(``optimize=False``: the optimiser deletes AdamW's ``+ eps``).

Graph inputs: ``image`` [N,C,Z,Y,X] f32, ``labels`` [N,Z,Y,X] i64, ``loss_weight`` [N] f32,
scalars ``lr``, ``step`` (1-based index of the step being taken: the checkpoint's step + 1),
``weight_decay`` (f32), then ``param.<name>`` for every parameter and ``m.<name>``, ``v.<name>``
for every trainable one. Outputs: ``loss``, ``loss_ce``, ``loss_dice``, then ``new.param.<name>``,
``new.m.<name>``, ``new.v.<name>`` for every trainable parameter.
"""
from __future__ import annotations

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


def _conv_backward(grad_output, input, weight, bias_sizes, stride, padding, dilation,
                   transposed, output_padding, groups, output_mask):
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
    if output_mask[1]:
        # Correlate input with grad_output over the batch: batch and channels swap roles,
        # stride and dilation swap, and the result is cropped to the kernel size.
        if transposed:
            gw = aten.convolution(_tr(grad_output), _tr(input), None, dilation, padding, stride,
                                  False, no_pad, 1)
        else:
            gw = aten.convolution(_tr(input), _tr(grad_output), None, dilation, padding, stride,
                                  False, no_pad, 1)
        gw = _tr(gw[(slice(None), slice(None)) + tuple(slice(0, ki) for ki in k)])
    if output_mask[2]:
        gb = grad_output.sum(dim=[0] + list(range(2, grad_output.dim())))
    return gi, gw, gb


def decomposition_table():
    table = torch._decomp.core_aten_decompositions()
    table[aten.convolution_backward.default] = _conv_backward
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


def export_train_step(model, path, config: TrainStepConfig, *, divisor: int | None = None):
    """Write the train-step ONNX graph of ``model`` to ``path``; returns (inputs, outputs)."""
    model = model.eval()  # no dropout / running stats; the U-Net's norms are per instance anyway
    divisor = divisor or getattr(model, "size_divisible_by", 1)
    n, spatial = _example_sizes(model, divisor)
    args = tuple(example_inputs(model, config, n, spatial))
    inputs, outputs = io_names(model, config)
    gm = make_fx(make_step_fn(model, config), tracing_mode="symbolic",
                 decomposition_table=decomposition_table())(*_symbolic_batch(args, divisor))
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
