"""Selective-scan dispatcher: one entry point, several backends (see `selective_scan`)."""

from __future__ import annotations

import os

import torch

from neurofuse.ssm.reference import selective_scan_ref

BACKENDS = ("reference",)


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
):
    """Mamba-1 selective scan with the semantics and shapes of `selective_scan_ref`.

    `backend` is "auto" (fastest available for the device; `NEUROFUSE_SCAN_BACKEND` overrides it)
    or one of `BACKENDS`.
    """
    if backend == "auto":
        backend = os.environ.get("NEUROFUSE_SCAN_BACKEND", "reference")
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; available: {', '.join(BACKENDS)}")
    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
