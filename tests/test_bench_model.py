"""benchmarks/model.py's kernel ceiling: the recorder sees exactly the ops FlopCounterMode counts (same total
FLOPs, identical calls merged with their count), the replay rebuilds each call's shapes, strides and dtypes,
and the ceiling row and Markdown columns follow from the replayed times."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import model

    return model


def _work(x: torch.Tensor, w: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Two identical convolutions, one matmul on a transposed (non-contiguous) view, uncounted extras."""
    y = F.conv2d(x, w, padding=1) + F.conv2d(x, w, padding=1)
    z = y[0].flatten(1).t() @ m  # (HW, C) strided view times (C, 5)
    return torch.relu(z).sum()


def test_recorder_matches_flop_counter_and_merges_identical_calls(bench):
    x, w, m = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4, 5)
    rec = bench.CountedOps()
    with rec:
        _work(x, w, m)
    counts = sorted((func.overloadpacket.__name__, n) for func, _, _, n in rec.calls.values())
    assert counts == [("convolution", 2), ("mm", 1)]
    rows = bench.replay(rec.calls, torch.device("cpu"), repeats=1)
    assert sum(n * flops for _, n, _, flops in rows) == bench.count_flops(lambda: _work(x, w, m))
    assert all(sec > 0 for _, _, sec, _ in rows)


def test_replay_rebuilds_strides_and_dtypes(bench):
    a = torch.randn(6, 4).t()  # non-contiguous
    b = torch.randn(6, 3, dtype=torch.float64)
    rec = bench.CountedOps()
    with rec:
        torch.mm(a, torch.randn(6, 3))
        torch.mm(b.t(), b)
    specs = [args for _, args, _, _ in rec.calls.values()]
    assert specs[0][0] == ((4, 6), (1, 4), torch.float32, torch.device("cpu"))
    assert specs[1][1][2] == torch.float64
    rebuilt = bench._materialise(specs[0][0])
    assert rebuilt.shape == (4, 6) and rebuilt.stride() == (1, 4) and torch.isfinite(rebuilt).all()
    assert bench._materialise(3) == 3
    expanded = bench._materialise(bench._spec(torch.randn(4, 1).expand(4, 5)))  # broadcast: stride 0
    assert expanded.stride() == (1, 0) and torch.equal(expanded[:, 0], expanded[:, 4])


def test_ceiling_row_and_markdown(bench, monkeypatch):
    monkeypatch.setattr(bench, "kernel_ceiling", lambda fn, device, repeats: (0.5, [("mm[(2,2)]", 3, 0.1, 8)]))
    row = bench._row("case", "fp32", 2.0, 100_000_000_000, 200e9)  # floor 0.5 s of 2 s
    bench._add_ceiling(row, None, torch.device("cpu"), 1)
    assert row["counted_alone_ms"] == 500.0 and row["ceiling_share"] == 1.0
    text = bench.markdown([row], ["header"])
    assert "| kernel ceiling |" in text and text.strip().endswith("| 500 | 100% |")
    plain = {k: v for k, v in row.items() if k not in bench.CEILING_COLUMNS}
    assert "kernel ceiling" not in bench.markdown([plain], ["header"])


@pytest.mark.parametrize("transposed", [False, True])
def test_conv_backward_flops_equal_torch_without_groups(bench, transposed):
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    w = torch.randn(4, 6, 3, 3, requires_grad=True)
    y = F.conv_transpose2d(x, w) if transposed else F.conv2d(x, w.transpose(0, 1).contiguous())
    g = torch.randn_like(y)
    with FlopCounterMode(display=False) as torch_count:
        y.backward(g, retain_graph=True)
    assert bench.count_flops(lambda: y.backward(g, retain_graph=True)) == torch_count.get_total_flops()


def test_depthwise_conv_backward_is_counted_per_group(bench):
    """Input and weight gradients each cost the forward's FLOPs (torch's own formula counts C times that)."""
    x = torch.randn(2, 16, 50, requires_grad=True)
    w = torch.randn(16, 1, 4, requires_grad=True)
    fwd = bench.count_flops(lambda: F.conv1d(x, w, groups=16))
    assert fwd == 2 * 2 * 16 * 47 * 4
    y = F.conv1d(x, w, groups=16)
    assert bench.count_flops(lambda: y.sum().backward()) == 2 * fwd


def test_scan_updates_counts_every_direction(bench):
    from neurofuse.models.mamba import MultiScanMamba, scan_orders

    orders = scan_orders(2, "four_way")  # two forward and two reversed directions: two scan calls
    mixer = MultiScanMamba(8, orders, d_state=4, expand=2)
    x = torch.randn(3, 5 * 6, 8)
    n = bench.scan_updates(lambda: mixer(x, (5, 6)))
    assert n == 3 * len(orders) * 16 * 30 * 4  # batch x directions x d_inner x L x d_state


def test_scan_loop_cost_is_positive_and_training_costs_more(bench):
    pytest.importorskip("numba")
    fwd = bench.scan_loop_seconds_per_update(False, reps=5)
    train = bench.scan_loop_seconds_per_update(True, reps=5)
    assert 0 < fwd < 1e-6 and train > fwd


def test_scan_bound_row_and_markdown(bench, monkeypatch):
    monkeypatch.setattr(bench, "kernel_ceiling", lambda fn, device, repeats: (0.5, [("mm[(2,2)]", 3, 0.1, 8)]))
    row = bench._row("case", "fp32", 2.0, 100_000_000_000, 200e9)  # floor 0.5 s; counted ops alone 0.5 s
    bench._add_ceiling(row, None, torch.device("cpu"), 1)
    bench._add_scan_bound(row, 2_000_000_000, 1e-9, 4)  # 2 G updates at 1 ns on 4 threads: 0.5 s
    assert row["scan_loop_ms"] == 500.0 and row["bound_share"] == 0.5 and row["scan_gupdates"] == 2.0
    text = bench.markdown([row], ["header"])
    assert "| bound with the scan |" in text and text.strip().endswith("| 2.000 | 500 | 50% |")


def test_main_writes_the_scan_bound_columns_when_every_row_has_them(bench, monkeypatch, tmp_path):
    def cases(device, precisions, repeats, only, ceiling=False):
        row = bench._row("case", "fp32", 2.0, 100_000_000_000, 200e9)
        row.update(counted_alone_ms=500.0, ceiling_share=1.0)
        bench._add_scan_bound(row, 1_000_000_000, 1e-9, 2)
        return [row]

    monkeypatch.setattr(bench, "run_cases", cases)
    monkeypatch.setattr(bench, "matmul_peak", lambda *a, **k: 1e11)
    monkeypatch.setattr("sys.argv", ["model.py", "--ceiling", "--out", str(tmp_path)])
    bench.main()
    header, values = (tmp_path / "model.csv").read_text().splitlines()
    assert header.endswith("counted_alone_ms,ceiling_share,scan_gupdates,scan_loop_ms,bound_share")
    assert values.endswith(",500.0,1.0,1.0,500.0,0.5")
    assert "Bound with the scan" in (tmp_path / "model.md").read_text()
