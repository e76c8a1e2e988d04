"""The numba causal conv1d + SiLU against the F.conv1d reference: values, gradients, dtypes, errors."""

from __future__ import annotations

import pytest
import torch

from neurofuse.ssm import conv
from neurofuse.ssm.conv import causal_conv1d_silu, causal_conv1d_silu_ref


def _inputs(batch, ch, length, taps=4, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, ch, length, generator=g, dtype=dtype)
    w = torch.randn(ch, taps, generator=g, dtype=dtype)
    b = torch.randn(ch, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, w, b)]


def test_numba_conv_kernels_load():
    assert conv._load() is not None  # numba is a dependency: a failure to compile must fail here


def test_reference_is_the_definition():
    """The reference against the formula in the module docstring, written out per tap."""
    x, w, b = (t.detach() for t in _inputs(2, 3, 9, taps=3))
    for reverse in (False, True):
        want = torch.zeros_like(x) + b[:, None]
        for k in range(3):
            s = 2 - k
            if reverse:
                want[..., : 9 - s] += w[:, k, None] * x[..., s:]
            else:
                want[..., s:] += w[:, k, None] * x[..., : 9 - s]
        torch.testing.assert_close(causal_conv1d_silu_ref(x, w, b, reverse), torch.nn.functional.silu(want))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape", [(1, 512, 4096), (3, 5, 7), (2, 4, 2), (1, 3, 1)])
def test_numba_equals_reference_float32(shape, reverse):
    """Outputs and all three gradients, including rows shorter than the kernel."""
    x, w, b = _inputs(*shape)
    y = causal_conv1d_silu(x, w, b, reverse, backend="numba")
    y_ref = causal_conv1d_silu_ref(x, w, b, reverse)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, w, b), gy)
    want = torch.autograd.grad(y_ref, (x, w, b), gy)
    for name, g, r in zip("xwb", got, want, strict=True):
        scale = r.abs().max().item()
        torch.testing.assert_close(g, r, atol=2e-5 * scale + 1e-5, rtol=0, msg=f"d{name}")


@pytest.mark.parametrize("reverse", [False, True])
def test_numba_gradcheck_float64(reverse):
    x, w, b = _inputs(2, 3, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *a: causal_conv1d_silu(*a, reverse, backend="numba"), (x, w, b))


def test_bfloat16_input_keeps_its_dtype():
    x, w, b = (t.detach().bfloat16() for t in _inputs(2, 8, 64))
    y = causal_conv1d_silu(x, w, b, backend="numba")
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), causal_conv1d_silu_ref(x.float(), w.float(), b.float()),
                               atol=2e-2, rtol=2e-2)


def test_strided_input_is_read_correctly():
    """A transposed (non-contiguous) view, as the mixer's stacked directions can be."""
    x, w, b = _inputs(2, 16, 6)
    xt = x.detach().transpose(1, 2).contiguous().transpose(1, 2)  # same values, channel-fastest strides
    torch.testing.assert_close(causal_conv1d_silu(xt, w, b, backend="numba"), causal_conv1d_silu_ref(x, w, b))


def test_auto_follows_the_scan_reference_switch(monkeypatch):
    calls = []
    monkeypatch.setattr(conv._NumbaCausalConv, "apply", lambda *a: calls.append(a) or a[0])
    x, w, b = (t.detach() for t in _inputs(1, 2, 5))
    causal_conv1d_silu(x, w, b)
    assert len(calls) == 1
    monkeypatch.setenv("NEUROFUSE_SCAN_BACKEND", "reference")
    torch.testing.assert_close(causal_conv1d_silu(x, w, b), causal_conv1d_silu_ref(x, w, b))
    assert len(calls) == 1


@pytest.mark.parametrize(
    "args, match",
    [
        (((2, 3, 5), (4, 4), (3,)), "bad shapes"),
        (((3, 5), (3, 4), (3,)), "bad shapes"),
        (((2, 3, 5), (3, 4), (2,)), "bad shapes"),
    ],
)
def test_bad_shapes(args, match):
    with pytest.raises(ValueError, match=match):
        causal_conv1d_silu(*(torch.zeros(s) for s in args))


def test_unknown_backend():
    x, w, b = (t.detach() for t in _inputs(1, 2, 5))
    with pytest.raises(ValueError, match="unknown conv backend"):
        causal_conv1d_silu(x, w, b, backend="cuda")


def test_auto_keeps_reduced_precision_inference_on_the_reference(monkeypatch):
    """bf16 without grad goes to F.conv1d (no reorder cost there); with grad, or in float32, to numba."""
    calls = []
    monkeypatch.setattr(conv._NumbaCausalConv, "apply", lambda *a: calls.append(a) or a[0])
    x, w, b = (t.detach().bfloat16() for t in _inputs(1, 2, 5))
    with torch.no_grad():
        causal_conv1d_silu(x, w, b)
    assert calls == []
    causal_conv1d_silu(x, w.requires_grad_(), b)
    assert len(calls) == 1


def test_numba_backend_refuses_non_cpu_tensors():
    x, w, b = (torch.zeros(s, device="meta") for s in ((1, 2, 5), (2, 4), (2,)))
    with pytest.raises(ValueError, match="runs on CPU tensors"):
        causal_conv1d_silu(x, w, b, backend="numba")
