"""Optimiser parameter groups: weight decay only where it regularises (mamba-ssm's and timm's rule).

Decay shrinks weights towards zero. That is wanted for the convolution, linear and attention weights,
and harmful for parameters whose zero means something else: a Mamba block's `A_log` (the log of the
state decay rates, -exp(A_log) = A) and `D` (the skip gain) are exempt in mamba-ssm
(`_no_weight_decay`), and biases, normalisation scales/shifts and Swin's relative-position bias
tables are exempt in timm. Our multi-direction Mamba stacks one parameter set per scan direction,
so its biases and `D` are 2D and `A_log` 3D: the rule goes by name and module, not only by ndim.
"""

from __future__ import annotations

import torch.nn as nn

NO_DECAY_NAMES = frozenset({"A_log", "D"})
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def decays(module: nn.Module, name: str, param: nn.Parameter) -> bool:
    """Whether `param`, registered as `name` on `module`, gets weight decay."""
    if name in NO_DECAY_NAMES or name.endswith("bias") or name.endswith("bias_table"):
        return False
    if getattr(param, "_no_weight_decay", False) or isinstance(module, _NORMS):
        return False
    return param.ndim > 1


def param_groups(model: nn.Module, weight_decay: float, lr_scale: dict[str, float] | None = None) -> list[dict]:
    """Optimiser groups of the trainable parameters: `[{decayed, weight_decay}, {exempt, 0.0}]`, each split
    further by `lr_scale` (parameter-name prefix -> lr multiplier, the first matching prefix wins; the
    group's `lr_scale`, 1 for the rest, which the trainer multiplies into the scheduled lr).

    For `torch.optim.AdamW(param_groups(model, wd), lr=...)` (or Adam); each group also carries
    `names`, the parameter names, for logs. A parameter shared by several modules appears once.
    """
    scales = dict(lr_scale or {})
    keys = [(True, 1.0), (False, 1.0)] + [(d, float(v)) for v in dict.fromkeys(scales.values()) for d in (True, False)]
    groups: dict[tuple[bool, float], tuple[list, list]] = {k: ([], []) for k in keys}
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{mod_name}.{name}" if mod_name else name
            scale = next((float(v) for prefix, v in scales.items() if full.startswith(prefix)), 1.0)
            params, names = groups[(decays(module, name, param), scale)]
            params.append(param)
            names.append(full)
    out = []
    for (decayed, scale), (params, names) in groups.items():
        group = {"params": params, "names": names, "weight_decay": float(weight_decay) if decayed else 0.0}
        out.append(group if scale == 1.0 else {**group, "lr_scale": scale})
    return out
