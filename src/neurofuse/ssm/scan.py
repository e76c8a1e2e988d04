"""Selective scan (Mamba-1): one entry point, several backends.

Semantics (Gu & Dao 2023, the `selective_scan_fn` of mamba-ssm), per batch b, channel d, state n:

    delta = softplus(delta + delta_bias)                         (delta_bias, softplus optional)
    h_t[n] = exp(delta_t * A[d, n]) * h_{t-1}[n] + delta_t * B_t[g(d), n] * u_t,   h_{-1} = 0
    y_t    = sum_n C_t[g(d), n] * h_t[n] + D[d] * u_t;   y_t *= silu(z_t)   (D, z optional)

Shapes: u, delta, z (batch, d_inner, L); A (d_inner, d_state); B, C (batch, d_state, L) or grouped
(batch, groups, d_state, L) with channel d using group g(d) = d // (d_inner / groups); D, delta_bias
(d_inner,). Output y (batch, d_inner, L) in u's dtype; with return_last_state also h after the last
step (batch, d_inner, d_state). Computation is float32 for half, bfloat16 and float32 inputs, float64
for float64 inputs. `reverse=True` scans from position L-1 down to 0, output aligned with the input
positions (= flip, scan, flip back); the last state is then the one after position 0.
A 2-axis sequence is accepted too: u, delta, z (batch, d_inner, L1, L2) and B, C
(batch, [groups,] d_state, L1, L2), scanned in the row-major order of the given view, y of u's shape;
so a transposed grid view x.transpose(-1, -2) is a column-major scan, with no copy in the numba backend.

Backends (`available_backends()` lists those usable here):
  reference  plain step-by-step PyTorch loop (`selective_scan_ref`), the ground truth;
  numba      compiled sequential CPU kernels, forward and backward, parallel over batch x d_inner,
             reads strided u/delta/z views and reversed order in place (`neurofuse.ssm.cpu`);
  chunked    PyTorch-only chunked scan, any device (`neurofuse.ssm.chunked`);
  mamba_ssm  mamba-ssm's CUDA `selective_scan_fn`, when that optional package imports.
"auto" picks mamba_ssm (else chunked) for CUDA tensors and numba (else reference) on CPU; the
environment variable NEUROFUSE_SCAN_BACKEND overrides "auto". If the numba kernels cannot be
imported or compiled, the scan warns once and falls back to the reference.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch

from neurofuse.ssm.chunked import selective_scan_chunked
from neurofuse.ssm.reference import selective_scan_ref

BACKENDS = ("reference", "numba", "chunked", "mamba_ssm")
ENV_VAR = "NEUROFUSE_SCAN_BACKEND"
_numba_error: Exception | None = None


def _numba_ok() -> bool:
    """True when the numba kernels load; on the first failure warn once and remember it."""
    global _numba_error
    if _numba_error is not None:
        return False
    from neurofuse.ssm import cpu

    try:
        cpu.load_kernels()
    except Exception as exc:  # ImportError, or any numba compilation error
        _numba_error = exc
        warnings.warn(
            f"neurofuse.ssm: numba scan kernels unavailable ({type(exc).__name__}: {exc}); "
            "falling back to the PyTorch scan",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


def _mamba_ssm_ok() -> bool:
    return importlib.util.find_spec("mamba_ssm") is not None


def available_backends() -> list[str]:
    """Backends usable in this environment (numba is compiled or loaded from cache on first call)."""
    names = ["reference", "chunked"]
    if _numba_ok():
        names.insert(1, "numba")
    if _mamba_ssm_ok():
        names.append("mamba_ssm")
    return names


def _mamba_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, reverse):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    if reverse:
        u, delta, B, C = (t.flip(-1) for t in (u, delta, B, C))
        z = z.flip(-1) if z is not None else None
    out = selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if not reverse:
        return out
    return (out[0].flip(-1), out[1]) if return_last_state else out.flip(-1)


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that will actually run for `backend` on `device` (after auto, env and fallbacks)."""
    if backend == "auto":
        backend = os.environ.get(ENV_VAR, "auto") or "auto"
    if backend == "auto":
        if device.type == "cuda":
            return "mamba_ssm" if _mamba_ssm_ok() else "chunked"
        return "numba" if _numba_ok() else "reference"
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; choose from auto, {', '.join(BACKENDS)}")
    if backend == "numba":
        if device.type != "cpu":
            raise ValueError(f"scan backend 'numba' runs on CPU tensors, got a {device.type} tensor")
        if not _numba_ok():
            return "reference"
    if backend == "mamba_ssm" and not _mamba_ssm_ok():
        raise ValueError("scan backend 'mamba_ssm' needs the optional package mamba-ssm (CUDA), not installed")
    return backend


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str = "auto",
    reverse: bool = False,
):
    """Mamba-1 selective scan (semantics and shapes in this module's docstring).

    `backend`: "auto" or one of `BACKENDS`; see `available_backends()`.
    """
    if u.dim() not in (3, 4) or delta.shape != u.shape or A.dim() != 2 or A.shape[0] != u.shape[1]:
        shapes = f"u {tuple(u.shape)}, delta {tuple(delta.shape)}, A {tuple(A.shape)}"
        raise ValueError(f"selective_scan: bad shapes {shapes}")
    n_seq = u.dim() - 2
    if B.dim() == 3 + n_seq and u.shape[1] % B.shape[1]:
        raise ValueError(f"selective_scan: d_inner {u.shape[1]} is not a multiple of groups {B.shape[1]}")
    name = resolve_backend(backend, u.device)
    if name == "numba":
        from neurofuse.ssm.cpu import selective_scan_numba

        return selective_scan_numba(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, reverse)
    grid = u.shape
    if n_seq == 2:  # the other backends take one flat sequence axis (a copy for non-contiguous views)
        u, delta, B, C = (t.flatten(-2) for t in (u, delta, B, C))
        z = z.flatten(-2) if z is not None else None
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, reverse)
    if name == "chunked":
        out = selective_scan_chunked(*args)
    elif name == "mamba_ssm":
        out = _mamba_scan(*args)
    else:
        out = selective_scan_ref(*args)
    if n_seq == 1:
        return out
    return (out[0].view(grid), out[1]) if return_last_state else out.view(grid)
