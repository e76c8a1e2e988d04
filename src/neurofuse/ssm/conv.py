"""The Mamba mixer's short causal depthwise convolution followed by SiLU: one entry point, two paths.

    y[b, c, l] = silu(bias[c] + sum_k weight[c, k] * x[b, c, l - (K-1) + k])       (zero padding)
    reverse:     silu(bias[c] + sum_k weight[c, k] * x[b, c, l + (K-1) - k])       (the causal conv of
                                                                                   the reversed sequence)

Shapes: x (batch, channels, L); weight (channels, K); bias (channels,); y like x.

Paths: `reference` is `F.pad` + `F.conv1d(groups=channels)` + `F.silu`. On CPU oneDNN reorders the
plain (batch, channels, L) tensors into and out of its channel-blocked layout around every call,
which costs more than the convolution itself (a 512-channel x 4096-token call took 40 ms, almost all
of it reorders); `numba` does the taps and the SiLU in one pass over each row (`_numba_conv`),
forward and backward, computing in float32 (float64 for float64 inputs). "auto" takes numba for CPU
tensors when its kernels load, else the reference; the scan's NEUROFUSE_SCAN_BACKEND=reference also
selects the reference here, so one switch gives the whole slow, obvious path.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F

from neurofuse.ssm.cpu import _np, _torch_thread_count
from neurofuse.ssm.scan import ENV_VAR

_kernels = None
_error: Exception | None = None


def _load():
    """The compiled kernels, or None (warning once) when numba cannot provide them."""
    global _kernels, _error
    if _kernels is None and _error is None:
        try:
            with _torch_thread_count():
                from neurofuse.ssm import _numba_conv

            _kernels = _numba_conv
        except Exception as exc:  # ImportError, or any numba compilation error
            _error = exc
            warnings.warn(f"neurofuse.ssm.conv: numba kernels unavailable ({type(exc).__name__}: {exc}); "
                          "using F.conv1d", RuntimeWarning, stacklevel=3)
    return _kernels


def causal_conv1d_silu_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                           reverse: bool = False) -> torch.Tensor:
    """The reference path: pad, grouped conv1d, SiLU."""
    k = weight.shape[1]
    if reverse:
        weight, pad = weight.flip(-1), (0, k - 1)
    else:
        pad = (k - 1, 0)
    return F.silu(F.conv1d(F.pad(x, pad), weight.unsqueeze(1), bias, groups=x.shape[1]))


class _NumbaCausalConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, reverse):
        k = _kernels
        ft = torch.float64 if x.dtype == torch.float64 else torch.float32
        batch, ch, length = x.shape
        xf = x.to(ft).contiguous().view(batch * ch, length)
        wf, bf = weight.to(ft).contiguous(), bias.to(ft).contiguous()
        y = torch.empty_like(xf)
        with _torch_thread_count():
            k.conv_silu_fwd(_np(xf), _np(wf), _np(bf), bool(reverse), _np(y))
        ctx.save_for_backward(xf, wf, bf)
        ctx.reverse = bool(reverse)
        ctx.dtypes = (x.dtype, weight.dtype, bias.dtype)
        ctx.batch = batch
        return y.view(x.shape).to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        k = _kernels
        xf, wf, bf = ctx.saved_tensors
        rows, length = xf.shape
        dyf = dy.to(xf.dtype).contiguous().view(rows, length)
        dx = torch.empty_like(xf)
        dw = torch.empty(rows, wf.shape[1], dtype=xf.dtype)
        db = torch.empty(rows, dtype=xf.dtype)
        with _torch_thread_count():
            k.conv_silu_bwd(_np(xf), _np(wf), _np(bf), ctx.reverse, _np(dyf), _np(dx), _np(dw), _np(db))
        tx, tw, tb = ctx.dtypes
        batch = ctx.batch
        return (dx.view(batch, rows // batch, length).to(tx), dw.view(batch, -1, wf.shape[1]).sum(0).to(tw),
                db.view(batch, -1).sum(0).to(tb), None)


def causal_conv1d_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, reverse: bool = False,
                       backend: str = "auto") -> torch.Tensor:
    """silu(causal depthwise conv1d) of x (batch, channels, L); semantics in this module's docstring.

    `backend`: "auto", "numba" (CPU only) or "reference".
    """
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1] or bias.shape != (x.shape[1],):
        raise ValueError(f"causal_conv1d_silu: bad shapes x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
                         f"bias {tuple(bias.shape)}")
    if backend not in ("auto", "numba", "reference"):
        raise ValueError(f"unknown conv backend {backend!r}; choose auto, numba or reference")
    if backend == "auto":  # bf16/half inference stays on oneDNN: its reduced-precision conv has no reorder cost
        wide = x.dtype in (torch.float32, torch.float64)
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, bias))
        use = (x.device.type == "cpu" and os.environ.get(ENV_VAR) != "reference"
               and (wide or grad))
    else:
        use = backend == "numba"
        if use and x.device.type != "cpu":
            raise ValueError(f"conv backend 'numba' runs on CPU tensors, got a {x.device.type} tensor")
    if use and _load() is not None:
        return _NumbaCausalConv.apply(x, weight, bias, reverse)
    return causal_conv1d_silu_ref(x, weight, bias, reverse)
