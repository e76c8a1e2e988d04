"""Every selective-scan backend against the reference: outputs, last state and all gradients.

Tolerance (float32 compute): |x - ref| <= 2e-4 * max|ref| + 1e-5 per tensor, i.e. relative to the
tensor's scale (the kernels' 2**x is within 2e-7 relative, see test_numba_math.py; errors come from
summation order over L).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

from neurofuse.ssm import available_backends, scan, selective_scan, selective_scan_ref

# Fixed, not asked of available_backends() at collection: numba is a dependency, and kernels that fail to
# load must fail these tests (the `backend` fixture), not remove them and leave the reference to pass alone.
BACKENDS = ("numba", "chunked")
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """A backend under test, checked to be the one that runs (numba: its kernels load, no silent fallback)."""
    if request.param == "numba":
        from neurofuse.ssm import cpu

        cpu.load_kernels()  # raises the real import or compilation error
    assert scan.resolve_backend(request.param, torch.device("cpu")) == request.param
    return request.param


def test_numba_kernels_load():
    from neurofuse.ssm import cpu

    assert cpu.load_kernels() is not None
    assert "numba" in available_backends() and scan._numba_error is None


def make_inputs(batch, d_inner, d_state, L, groups=None, delta_scale=0.5, full=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape_bc = (batch, d_state, L) if groups is None else (batch, groups, d_state, L)
    return {
        "u": torch.randn(batch, d_inner, L, generator=g),
        "delta": torch.randn(batch, d_inner, L, generator=g) * delta_scale,
        "A": -torch.rand(d_inner, d_state, generator=g) - 0.2,
        "B": torch.randn(*shape_bc, generator=g),
        "C": torch.randn(*shape_bc, generator=g),
        "D": torch.randn(d_inner, generator=g) if full else None,
        "z": torch.randn(batch, d_inner, L, generator=g) if full else None,
        "delta_bias": torch.randn(d_inner, generator=g) * 0.5 if full else None,
    }


def run(fn, inputs, **kw):
    """Output, last state and the gradients of every tensor input under a fixed random cotangent."""
    leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    y, h = fn(**leaves, return_last_state=True, **kw)
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(y.shape, generator=g)
    gh = torch.randn(h.shape, generator=g)
    ((y.float() * gy).sum() + (h.float() * gh).sum()).backward()
    return y.detach(), h.detach(), {k: v.grad for k, v in leaves.items() if v is not None}


def assert_close(a, r, name, rtol=2e-4):
    tol = rtol * r.abs().max().item() + 1e-5
    err = (a.float() - r.float()).abs().max().item()
    assert err <= tol, f"{name}: max error {err:.3g} > {tol:.3g}"


def check_against_reference(backend, inputs, **kw):
    y, h, grads = run(selective_scan, inputs, backend=backend, **kw)
    yr, hr, grads_r = run(selective_scan_ref, inputs, **kw)
    assert_close(y, yr, "y")
    assert_close(h, hr, "last state")
    assert grads.keys() == grads_r.keys()
    for k in grads:
        assert grads[k].shape == inputs[k].shape
        assert_close(grads[k], grads_r[k], f"d{k}")


CASES = {
    "L1": dict(batch=1, d_inner=4, d_state=3, L=1),
    "L67_batch2": dict(batch=2, d_inner=6, d_state=4, L=67),
    "grouped_reverse": dict(batch=2, d_inner=8, d_state=4, L=130, groups=2),
    "partial_channel_block": dict(batch=1, d_inner=40, d_state=5, L=70, groups=1),
    # 6 channel blocks (32, 8 channels) over at most 2 backward workers: a short block follows a full one
    # in the same worker's buffers
    "short_block_after_full": dict(batch=3, d_inner=40, d_state=3, L=70),
    "zero_delta": dict(batch=2, d_inner=4, d_state=3, L=20, delta_scale=0.0),
    "bare": dict(batch=1, d_inner=5, d_state=2, L=33, full=False),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("reverse", [False, True])
def test_matches_reference(backend, case, reverse):
    params = dict(CASES[case])
    softplus = params.get("full", True)
    check_against_reference(backend, make_inputs(**params), delta_softplus=softplus, reverse=reverse)


def test_very_large_delta(backend):
    inputs = make_inputs(2, 4, 3, 40)
    inputs["delta"] = inputs["delta"].abs() * 1e4  # exp(delta * A) underflows to 0: state resets
    check_against_reference(backend, inputs, delta_softplus=True)
    y = selective_scan(**inputs, delta_softplus=True, backend=backend)
    assert torch.isfinite(y).all()


def test_long_sequence_crosses_segments(backend):
    check_against_reference(backend, make_inputs(1, 3, 2, 1100, full=False), reverse=True)


def test_strided_and_grid_views(backend):
    """Channels-last and transposed-grid views give the scan of the materialised sequence."""
    g = torch.Generator().manual_seed(3)
    batch, d, n, H, W = 2, 6, 3, 5, 7
    x = torch.randn(batch, H * W, 3 * d + 2 * n, generator=g)  # an x_proj-like (batch, L, features) tensor
    u, delta, z = (x[..., i * d : (i + 1) * d].transpose(1, 2) for i in range(3))  # (batch, d, L) views
    B = x[..., 3 * d : 3 * d + n].transpose(1, 2)
    C = x[..., 3 * d + n :].transpose(1, 2)
    assert not u.is_contiguous()
    A = -torch.rand(d, n, generator=g)
    y = selective_scan(u, delta, A, B, C, z=z, delta_softplus=True, backend=backend)
    yr = selective_scan_ref(*(t.contiguous() for t in (u, delta, A, B, C)), z=z.contiguous(), delta_softplus=True)
    assert_close(y, yr, "y strided")
    # column-major scan of an (H, W) grid as a transposed 4D view, reversed, with gradients
    grid = {k: t.unflatten(-1, (H, W)) for k, t in dict(u=u, delta=delta, B=B, C=C).items()}
    col = {k: t.transpose(-1, -2) for k, t in grid.items()}  # (..., W, H) views
    flat = {k: t.flatten(-2) for k, t in col.items()}  # the same order, materialised
    y4 = selective_scan(col["u"], col["delta"], A, col["B"], col["C"], delta_softplus=True, backend=backend,
                        reverse=True)  # fmt: skip
    y3 = selective_scan_ref(flat["u"], flat["delta"], A, flat["B"], flat["C"], delta_softplus=True, reverse=True)
    assert y4.shape == col["u"].shape
    assert_close(y4.flatten(-2), y3, "y grid")
    leaves = {k: v.detach().clone().requires_grad_() for k, v in col.items()}
    selective_scan(leaves["u"], leaves["delta"], A, leaves["B"], leaves["C"], backend=backend).square().sum().backward()
    leaves_r = {k: v.detach().clone().requires_grad_() for k, v in flat.items()}
    selective_scan_ref(leaves_r["u"], leaves_r["delta"], A, leaves_r["B"], leaves_r["C"]).square().sum().backward()
    for k in leaves:
        assert_close(leaves[k].grad.flatten(-2), leaves_r[k].grad, f"grid d{k}")


def test_reverse_is_flip_scan_flip():
    inputs = make_inputs(1, 4, 3, 25)
    flipped = {k: (v.flip(-1) if k in ("u", "delta", "B", "C", "z") else v) for k, v in inputs.items()}
    y = selective_scan_ref(**inputs, delta_softplus=True, reverse=True)
    assert_close(y, selective_scan_ref(**flipped, delta_softplus=True).flip(-1), "reverse")


def test_bf16_inputs(backend):
    inputs = {k: (v.bfloat16() if v is not None else None) for k, v in make_inputs(2, 4, 3, 30).items()}
    y, h, grads = run(selective_scan, inputs, backend=backend, delta_softplus=True)
    yr, hr, grads_r = run(selective_scan_ref, inputs, delta_softplus=True)
    assert y.dtype == torch.bfloat16 and grads["u"].dtype == torch.bfloat16
    assert_close(y, yr, "y bf16", rtol=2e-2)
    for k in grads:
        assert_close(grads[k], grads_r[k], f"d{k} bf16", rtol=2e-2)


def test_gradcheck_float64(backend):
    inputs = {k: (v.double().requires_grad_() if v is not None else None) for k, v in make_inputs(1, 3, 2, 5).items()}
    inputs["B"] = make_inputs(1, 4, 2, 5, groups=2)["B"][:, :1].double().requires_grad_()  # grouped form

    def f(*args):
        return selective_scan(*args, delta_softplus=True, backend=backend, reverse=True)

    assert torch.autograd.gradcheck(f, tuple(inputs[k] for k in NAMES), eps=1e-6, atol=1e-5)


def test_fallback_warns_once_and_uses_reference(monkeypatch):
    from neurofuse.ssm import cpu

    def broken():
        raise ImportError("numba missing (simulated)")

    monkeypatch.setattr(cpu, "load_kernels", broken)
    monkeypatch.setattr(scan, "_numba_error", None)
    monkeypatch.delenv(scan.ENV_VAR, raising=False)
    inputs = make_inputs(1, 3, 2, 9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y1 = selective_scan(**inputs, backend="numba")
        y2 = selective_scan(**inputs)
        assert "numba" not in scan.available_backends()
    assert sum("numba scan kernels unavailable" in str(w.message) for w in caught) == 1
    assert scan.resolve_backend("auto", torch.device("cpu")) == "reference"
    yr = selective_scan_ref(**inputs)
    assert torch.equal(y1, yr) and torch.equal(y2, yr)


def test_env_override_and_bad_names(monkeypatch):
    monkeypatch.setenv(scan.ENV_VAR, "chunked")
    assert scan.resolve_backend("auto", torch.device("cpu")) == "chunked"
    assert scan.resolve_backend("reference", torch.device("cpu")) == "reference"
    monkeypatch.setenv(scan.ENV_VAR, "nope")
    with pytest.raises(ValueError, match="unknown scan backend"):
        selective_scan(**make_inputs(1, 2, 2, 3))
    if "mamba_ssm" not in available_backends():
        with pytest.raises(ValueError, match="mamba-ssm"):
            scan.resolve_backend("mamba_ssm", torch.device("cpu"))


def test_numba_scan_keeps_torchs_thread_count():
    """In a fresh process limited to one thread (OMP_NUM_THREADS=1, as a user or a scheduler sets it),
    loading and running the numba scan (forward and backward) leaves torch on one thread: numba's OpenMP
    layer must not raise it to every core."""
    code = """
import torch
from neurofuse.ssm import selective_scan
torch.randn(256, 256) @ torch.randn(256, 256)  # torch's own thread pool is up before numba starts
g = torch.Generator().manual_seed(0)
u = torch.randn(1, 8, 32, generator=g, requires_grad=True)
A, B, C = -torch.rand(8, 4, generator=g), torch.randn(1, 4, 32, generator=g), torch.randn(1, 4, 32, generator=g)
selective_scan(u, torch.rand(1, 8, 32, generator=g), A, B, C, backend="numba").sum().backward()
print(torch.get_num_threads())
"""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_NUM_THREADS", "MKL_NUM_THREADS")}
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split()[-1] == "1", out.stdout
