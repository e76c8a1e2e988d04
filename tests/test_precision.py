"""`precision: auto` picks bf16 only where it is native; the capability is mocked both ways."""

from __future__ import annotations

import warnings

import pytest
import torch

from neurofuse import precision as P
from neurofuse.errors import UsageError


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("NEUROFUSE_PRECISION", raising=False)
    P.cpu_has_native_bf16.cache_clear()
    P._warn_emulated.cache_clear()
    yield
    P.cpu_has_native_bf16.cache_clear()
    P._warn_emulated.cache_clear()


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_follows_cpu_capability(no_env, monkeypatch, native, expected):
    monkeypatch.setattr(P, "_torch_cpu_bf16", lambda: native)
    assert P.resolve_precision("auto", torch.device("cpu")) == expected
    assert P.resolve_precision("auto", "cpu") == expected


@pytest.mark.parametrize("flags, expected", [({"avx2", "amx_bf16"}, True), ({"avx2", "avx512_bf16"}, True),
                                             ({"avx2", "avx512f"}, False), (set(), False)])
def test_cpuinfo_flags_when_torch_has_no_probe(no_env, monkeypatch, flags, expected):
    monkeypatch.setattr(P, "_torch_cpu_bf16", lambda: None)
    monkeypatch.setattr(P, "_proc_cpu_flags", lambda: flags)
    assert P.cpu_has_native_bf16() is expected


def test_proc_cpu_flags_parses_the_first_flags_line(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 amx_bf16\n\n"
                    "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n")
    real = P.Path
    monkeypatch.setattr(P, "Path", lambda p: info if p == "/proc/cpuinfo" else real(p))
    assert P._proc_cpu_flags() == {"fpu", "avx2", "amx_bf16"}
    assert P.cpu_info() == ("Some CPU", {"fpu", "avx2", "amx_bf16"})


def test_cuda_auto_follows_cuda_bf16_support(no_env, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert P.resolve_precision("auto", "cuda:0") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert P.resolve_precision("auto", torch.device("cuda", 0)) == "fp32"


def test_explicit_bf16_on_emulating_cpu_warns_once_with_the_cost(no_env, monkeypatch):
    monkeypatch.setattr(P, "_torch_cpu_bf16", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert P.resolve_precision("bf16", "cpu") == "bf16"
        assert P.resolve_precision("bf16", "cpu") == "bf16"
    assert len(caught) == 1
    assert "slower" in str(caught[0].message) and "x slower" in str(caught[0].message)


def test_explicit_choices_win_and_native_bf16_is_silent(no_env, monkeypatch):
    monkeypatch.setattr(P, "_torch_cpu_bf16", lambda: True)
    monkeypatch.setenv("NEUROFUSE_PRECISION", "fp32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert P.resolve_precision("bf16", "cpu") == "bf16"
    assert P.resolve_precision("fp32", "cpu") == "fp32"
    assert P.resolve_precision("auto", "cpu") == "fp32"  # the environment fixes what auto means


def test_bad_values_are_usage_errors(no_env, monkeypatch):
    with pytest.raises(UsageError, match="fp8"):
        P.resolve_precision("fp8", "cpu")
    monkeypatch.setenv("NEUROFUSE_PRECISION", "half")
    with pytest.raises(UsageError, match="NEUROFUSE_PRECISION"):
        P.resolve_precision("auto", "cpu")


def test_trainer_and_inference_default_to_auto():
    import inspect

    from neurofuse.inference import fuse_with_model
    from neurofuse.train import TrainConfig

    assert TrainConfig().precision == "auto"
    assert inspect.signature(fuse_with_model).parameters["precision"].default == "auto"


def test_shipped_configs_say_auto():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1] / "configs"
    configs = sorted(root.rglob("*.yaml"))
    assert configs
    for path in configs:
        assert yaml.safe_load(path.read_text(encoding="utf-8")).get("precision") == "auto", path
