"""`precision: auto` picks bf16 only where it is native; the capability is mocked both ways."""

from __future__ import annotations

import copy
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


class FaultyConv2d(torch.nn.Conv2d):
    """A conv whose kernel is wrong under bf16 autocast (as oneDNN's bf16 Conv2d 16->32 4x4/4 was on one
    Sapphire Rapids guest): the output's sign flips whenever autocast is on."""

    def forward(self, x):
        y = super().forward(x)
        return -y if torch.is_autocast_enabled("cpu") else y


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), FaultyConv2d(4, 4, 3, padding=1),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3))


@pytest.fixture
def fresh_probes(monkeypatch):
    monkeypatch.setattr(P, "_PROBED", {})


def test_layer_error_finds_the_faulty_kernel_and_passes_a_working_one():
    assert P.bf16_layer_error(FaultyConv2d(4, 4, 3, padding=1)) > 1.0
    ok = torch.nn.Conv2d(4, 4, 3, padding=1)
    assert P.bf16_layer_error(ok) < P.BF16_TOLERANCE
    assert P.bf16_layer_error(ok, backward=False) < P.BF16_TOLERANCE


def test_guard_pins_only_the_faulty_layer_and_fixes_the_bf16_result(fresh_probes):
    net, x = _net(), torch.rand(2, 1, 8, 8)
    keys = list(net.state_dict())
    with torch.no_grad():
        ref = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            wrong = net(x).float()
        with pytest.warns(RuntimeWarning, match=r"FaultyConv2d 4->4 kernel 3x3 stride 1x1 \d+% off fp32"):
            assert P.guard_bf16(net) == ["1"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fixed = net(x).float()
        assert torch.equal(net(x), ref)  # fp32 unchanged
    err = lambda y: float((y - ref).norm() / ref.norm())  # noqa: E731
    assert err(wrong) > 0.3 and err(fixed) < 0.05
    assert list(net.state_dict()) == keys
    ema = copy.deepcopy(net)  # an EMA copy (AveragedModel deep-copies) keeps the pinning
    assert type(ema[1]) is type(net[1]) and isinstance(ema[1], FaultyConv2d)


def test_guard_probes_each_shape_once_and_backward_separately(fresh_probes, monkeypatch):
    calls = []
    real = P.bf16_layer_error

    def counted(module, device="cpu", backward=True):
        calls.append(backward)
        return real(module, device, backward)

    monkeypatch.setattr(P, "bf16_layer_error", counted)
    net = _net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = P.guard_bf16(net)
        assert P.guard_bf16(net) == first == ["1"]  # a pinned layer is recognised by its original shape
        assert P.guard_bf16(_net()) == ["1"]
    assert calls == [False, False, False]  # three shapes, probed once for all three calls
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert P.guard_bf16(net, backward=True) == ["1"]
    assert calls.count(True) == 3


def test_fusing_in_bf16_runs_the_faulty_layer_in_fp32(fresh_probes):
    from neurofuse.inference import fuse_with_model

    net = torch.nn.Module()
    net.spatial_dims, net.stride = 2, 1
    net.body = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), FaultyConv2d(4, 1, 3, padding=1))
    net.forward = lambda a, b: torch.sigmoid(net.body(torch.cat([a, b], 1)))
    a, b = torch.rand(2, 16, 16).numpy()
    ref = fuse_with_model(net, a, b, precision="fp32")
    with pytest.warns(RuntimeWarning, match="off fp32"):
        got = fuse_with_model(net, a, b, precision="bf16")
    assert abs(got - ref).max() < 0.02


def test_training_in_bf16_pins_the_faulty_layer_for_model_and_ema(fresh_probes, tmp_path):
    import sys
    from pathlib import Path

    from neurofuse.train import TrainConfig, train

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_data import make_harvard
    from test_train import TinyFuse

    model = TinyFuse()
    model.body[4] = FaultyConv2d(8, 1, 3, padding=1)
    cfg = TrainConfig(model="tinyfuse", data=str(make_harvard(tmp_path / "pairs", n_train=4, n_val=1, size=24)),
                      out=str(tmp_path / "run"), epochs=1, batch_size=2, crop=16, lr=1e-3, threads=1,
                      precision="bf16", ema=0.9, val_metrics=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(cfg, model=model)
    assert isinstance(model.body[4], P._Fp32Layer) and not isinstance(model.body[0], P._Fp32Layer)
    assert isinstance(result.model.body[4], P._Fp32Layer)
