"""The export wrapper (named image inputs in, named maps out) and the BatchNorm folding the exporters use.

Kept out of the training models, as SAM's ``SamOnnxModel`` and ml-stable-diffusion's wrappers are.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from pbrforge.contract import INPUT_MEAN, INPUT_STD, MAP_NAMES, MAPS, NUM_VIEWS
from pbrforge.export.parity import psnr


class PBRExportWrapper(nn.Module):
    """view_0, view_1, view_2: (1, 3, H, W) RGB in 0..255 -> albedo, roughness, metallic, normal.

    The training normalisation is folded into the graph, and the views are stacked along the batch so
    the graph stays 4-D (the models' ``forward_flat``).
    """

    def __init__(self, model: nn.Module, use_sr: bool = True):
        super().__init__()
        self.model, self.use_sr = model, use_sr
        register_normalisation(self, INPUT_MEAN, INPUT_STD)

    scale: torch.Tensor
    shift: torch.Tensor

    def forward(self, view_0: torch.Tensor, view_1: torch.Tensor, view_2: torch.Tensor):
        flat = torch.cat([view_0, view_1, view_2], dim=0) * self.scale + self.shift  # (V, 3, H, W)
        maps = self.model.forward_flat(flat, NUM_VIEWS, self.use_sr)  # type: ignore[operator]  # (1, 8, S, S)
        return tuple(maps[:, MAPS[n].slice] for n in MAP_NAMES)


def register_normalisation(module: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Buffers ``scale`` and ``shift`` of (1, 3, 1, 1) taking 0..255 RGB to a network's normalisation as
    ``x * scale + shift``, so it is folded into the exported graph."""
    module.register_buffer("scale", (1.0 / (255.0 * torch.tensor(std))).view(1, 3, 1, 1))
    module.register_buffer("shift", (-torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1))


def fold_batchnorm(model: nn.Module, example: tuple[torch.Tensor, ...]) -> nn.Module:
    """A copy of ``model`` (eval) with every BatchNorm that directly follows a Conv2d folded into it.

    The BN becomes an exact identity (activation kept), so the copy computes the same function while its
    conv weights equal those a converter stores: that is what lets palettized weights read back from an
    .mlpackage be put into PyTorch by matching.
    """
    model = copy.deepcopy(model).eval()
    produced: dict[int, tuple[nn.Conv2d, torch.Tensor]] = {}  # keeps outputs alive so ids stay unique
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []

    def conv_hook(mod, inp, out):
        produced[id(out)] = (mod, out)

    def bn_hook(mod, inp, out):
        hit = produced.get(id(inp[0]))
        if hit is not None and hit[1] is inp[0]:
            pairs.append((hit[0], mod))

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(bn_hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad(), _TensorUses() as uses:
        model(*example)
    for h in hooks:
        h.remove()
    # Only a conv whose output feeds the BN alone can absorb it (not one that also feeds a residual).
    pairs = [(c, b) for c, b in pairs if uses.count(next(o for m, o in produced.values() if m is c)) == 1]

    def outputs() -> list[torch.Tensor]:
        return [o.clone() for o in model(*example)]

    seen: set[int] = set()
    with torch.no_grad():
        before = outputs()
        for conv, bn in pairs:
            if id(bn) in seen:
                continue
            seen.add(id(bn))
            saved = (copy.deepcopy(conv.state_dict()), copy.deepcopy(bn.state_dict()), conv.bias)
            _fold_pair(conv, bn)
            after = outputs()
            # A conv whose output also feeds something else (a residual, say) must not be folded: undo it.
            if (
                min(psnr(a.numpy(), b.numpy()) for a, b in zip(before, after, strict=True))
                < FOLD_STEP_MIN_PSNR
            ):
                conv.bias = saved[2]
                conv.load_state_dict(saved[0])
                bn.load_state_dict(saved[1])
            else:
                before = after
    return model


class _TensorUses(TorchFunctionMode):
    """Counts, per tensor, the torch calls that consume it and return a tensor (shape queries do not count)."""

    def __init__(self) -> None:
        super().__init__()
        self.uses: dict[int, int] = {}
        self.alive: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) or (
            isinstance(out, tuple) and any(isinstance(o, torch.Tensor) for o in out)
        ):
            for a in tree_leaves((args, kwargs)):
                if isinstance(a, torch.Tensor):
                    self.uses[id(a)] = self.uses.get(id(a), 0) + 1
                    self.alive.append(a)
        return out

    def count(self, t: torch.Tensor) -> int:
        return self.uses.get(id(t), 0)


FOLD_STEP_MIN_PSNR = 90.0  # dB between outputs before and after one fold: only float rounding may differ


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` into ``conv`` and turn ``bn`` into an exact identity (its activation, if any, stays)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{bn} tracks no running statistics: there is nothing to fold")
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.mul_(s.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = bn.bias + (bias - bn.running_mean) * s
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias)
    else:
        conv.bias.copy_(new_bias)
    bn.weight.fill_(1.0)
    bn.bias.zero_()
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - bn.eps)


def example_inputs(size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Three reproducible (1, 3, size, size) views of whole numbers in 0..255 (exactly an 8-bit image), smooth like a photo."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(NUM_VIEWS, 3, max(2, size // 16), max(2, size // 16), generator=g)
    smooth = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    views = (
        (smooth * 0.8 + 0.2 * torch.rand(NUM_VIEWS, 3, size, size, generator=g)).clamp(0, 1) * 255
    ).round()
    return tuple(v[None].contiguous() for v in views)
