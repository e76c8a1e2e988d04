"""ClinicalFMamba speed against the machine's own FLOP floor, measured in one run.

The run first measures this machine's matmul peak (best of several square `torch.mm`, fp32, and
bf16 where the CPU or GPU computes it natively, `neurofuse.precision.native_bf16`), then times each
case (median of `--repeats` after a warm-up) and counts its FLOPs with
`torch.utils.flop_counter.FlopCounterMode`. Floor = FLOPs / matmul peak of the case's precision;
share = floor / time (100% would be a model that is all peak-speed matmul). The peak is measured
again right before every case and that case's floor uses it, so a machine whose load changes during
the run (shared cores) still compares each case with what the hardware gave at that moment.

What the FLOP counter leaves out: it counts only matmul-like aten ops (mm, addmm, bmm, convolution
and their backward). It does not see the selective scan (a numba kernel behind a custom autograd
function, about 9 FLOPs per element of (batch, d_inner, L, d_state) forward), nor elementwise ops,
norms, activations, softplus, pooling, interpolation, copies and the optimiser. Those are real work
the floor does not credit, so a share well below 100% is expected even for perfect code.

The kernel ceiling (`--ceiling`): every call of a counted op is recorded during one run of the case
(its overload and its arguments' shapes, strides and dtypes, through a TorchDispatchMode) and replayed
alone on fresh tensors; the sum of those times is what the case would take if everything the counter
does not credit cost nothing. floor / that sum is the highest share these very kernels (oneDNN / MKL
here) can reach for the case, so a target above it needs faster convolution and matmul kernels, not
less overhead around them. The slowest counted ops are printed with the speed they reach. On CPU with
the numba scan it also counts each case's selective-scan state updates and times the scan's innermost
recurrence alone: floor / (counted ops alone + that recurrence) is the bound with the scan, the most
share reachable if only the counted kernels and the scan's hot loop cost anything.

Cases: 2D forward 128^2 and 256^2 (one pair), 2D training step (batch 8 x 128^2, Adam), 3D forward
128^3 (one pair; FLOPs counted at 64^3 and scaled by 8, exact because every counted op is per voxel
or per latent token), 3D training step (one 64^3 pair). Prints the CPU model and its vector/matrix
flags, and writes the table as Markdown and CSV with `--out DIR` (model.md, model.csv).

    .venv/bin/python benchmarks/model.py [--device cpu] [--threads N] [--repeats 3] [--out DIR]
        [--only 2d|3d] [--no-bf16] [--profile] [--ceiling]
"""

from __future__ import annotations

import argparse
import csv
import functools
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import flop_registry

from neurofuse.models import create_model
from neurofuse.precision import cpu_info, guard_bf16, native_bf16
from neurofuse.ssm.scan import available_backends

aten = torch.ops.aten

CATEGORIES = (  # (category, substrings of profiler op names), first match wins
    ("selective scan", ("scan",)),
    ("convolution", ("conv", "mkldnn")),
    ("matmul / linear", ("mm", "addmm", "matmul", "linear", "einsum")),
    ("copies / layout", ("copy", "clone", "contiguous", "cat", "stack", "flip", "pad", "permute", "transpose",
                         "index", "where", "expand", "reshape", "view", "_to_copy", "fill", "zero")),
    ("normalisation", ("norm",)),
    ("upsample", ("upsample",)),
    ("elementwise", ("mul", "add", "sub", "div", "exp", "sigmoid", "silu", "softplus", "leaky", "relu", "sqrt",
                     "pow", "max", "mean", "sum", "abs", "neg", "clamp", "threshold")),
    ("optimizer", ("adam", "foreach", "lerp")),
)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FLAGS_SHOWN = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_tile", "amx_bf16",
               "amx_int8")


def cpu_description() -> tuple[str, list[str]]:
    """The CPU model name and which of FLAGS_SHOWN it has (from /proc/cpuinfo, else platform)."""
    model, flags = cpu_info()
    return model or platform.processor() or platform.machine(), [f for f in FLAGS_SHOWN if f in flags]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device, repeats: int, warmup=None) -> float:
    (warmup or fn)()  # warm-up (kernel compilation, allocator)
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 8) -> float:
    """This machine's matmul speed in FLOP/s: the best of `repeats` n x n x n products."""
    x, y = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(x, y)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        torch.mm(x, y)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of `aten.convolution_backward`, groups included: each requested gradient (input, weight)
    costs what the forward convolution costs. torch 2.13's formula ignores groups in the weight
    gradient, so a depthwise conv1d over C channels counted C times its real work (the Mamba mixers'
    512-channel conv1d backward came to 14 GFLOP a call instead of 0.03)."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(fn) -> int:
    """FLOPs of one call of `fn` by torch's FlopCounterMode (matmul-like ops only), with the convolution
    backward counted per group (`conv_backward_flops`)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping={aten.convolution_backward: conv_backward_flops}) as counter:
        fn()
    return int(counter.get_total_flops())


class _Spec(tuple):
    """(shape, stride, dtype, device) of a tensor argument, enough to rebuild one like it."""


def _spec(x):
    return _Spec((tuple(x.shape), tuple(x.stride()), x.dtype, x.device)) if isinstance(x, torch.Tensor) else x


def _materialise(x):
    if not isinstance(x, _Spec):
        return x
    shape, stride, dtype, device = x
    # the storage the view spans, filled, then viewed: also right for broadcast (stride-0) arguments
    span = 1 + sum((n - 1) * st for n, st in zip(shape, stride, strict=True)) if all(shape) else 0
    base = torch.empty(span, dtype=dtype, device=device)
    base = base.normal_() if dtype.is_floating_point else base.zero_()
    return base.as_strided(shape, stride)


class CountedOps(TorchDispatchMode):
    """Records every call of an op that FlopCounterMode counts: (overload, args, kwargs) with tensors as
    `_Spec`s. Identical calls are kept once with their count in `calls` {key: [func, args, kwargs, n]}."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, list] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in flop_registry:
            a, k = tree_map(_spec, args), tree_map(_spec, kwargs)
            key = repr((func, a, k))
            if key in self.calls:
                self.calls[key][3] += 1
            else:
                self.calls[key] = [func, a, k, 1]
        return func(*args, **kwargs)


def _replay_one(func, a, k, device: torch.device, repeats: int) -> tuple[str, float, int]:
    """(description, seconds, FLOPs) of one recorded call run alone on fresh tensors."""
    args, kwargs = tree_map(_materialise, a), tree_map(_materialise, k)

    def call():
        return func(*args, **kwargs)

    with torch.no_grad():
        sec = _time(call, device, repeats)
    shapes = [tuple(x[0]) if isinstance(x, _Spec) else x for x in a]
    return f"{func.overloadpacket.__name__} {shapes}".replace(" ", ""), sec, count_flops(call)


def replay(calls: dict[str, list], device: torch.device, repeats: int = 3) -> list[tuple[str, int, float, int]]:
    """Times each recorded call alone on fresh tensors (median of `repeats` after a warm-up):
    [(description, count, seconds per call, FLOPs per call)], slowest total first."""
    rows = []
    for func, a, k, n in calls.values():
        desc, sec, flops = _replay_one(func, a, k, device, repeats)
        rows.append((desc, n, sec, flops))
    return sorted(rows, key=lambda r: -r[1] * r[2])


def kernel_ceiling(fn, device: torch.device, repeats: int) -> tuple[float, list[tuple[str, int, float, int]]]:
    """Seconds the counted ops of one call of `fn` take when each runs alone, and the per-op rows."""
    rec = CountedOps()
    with rec:
        fn()
    rows = replay(rec.calls, device, repeats)
    return sum(n * sec for _, n, sec, _ in rows), rows


def scan_updates(fn) -> int:
    """State updates (batch x d_inner x L x d_state) of the selective scans one call of `fn` runs.

    Counted at `neurofuse.models.mamba.selective_scan`, the single call site of the Mamba mixers, so it
    does not depend on the scan backend."""
    from unittest import mock

    from neurofuse.models import mamba

    total = 0
    real = mamba.selective_scan

    def counting(u, delta, A, *args, **kwargs):
        nonlocal total
        total += u.numel() * A.shape[1]
        return real(u, delta, A, *args, **kwargs)

    with mock.patch.object(mamba, "selective_scan", counting):
        fn()
    return total


@functools.cache
def _scan_loop_driver():
    """A compiled loop that calls the numba scan's hot loops `reps` times (compiled once per process)."""
    import numpy as np
    from numba import njit

    from neurofuse.ssm.cpu import load_kernels

    k = load_kernels()
    recurrence, recompute, adjoint = k._recurrence, k._recompute, k._adjoint

    @njit
    def drive(reps, train, dt, x, u, g, dsp, y, a2, bt, ct, h, gst, da, hbuf, abuf, skip, sgb, sda, dbt, dct):
        m = dt.shape[0]
        x2 = np.empty_like(x)  # the adjoint overwrites its x tile (with d delta): give it a fresh copy each time
        for _ in range(reps):
            recurrence(m, 0, 1, dt, x, a2, bt, ct, h, y)
            if train:
                recompute(m, 0, 1, dt, x, a2, bt, ct, hbuf, abuf, y)
                x2[:] = x
                gst[:] = 0.1  # a fresh adjoint state, so repeated calls do not drift
                adjoint(m, 0, 1, dt, x2, u, g, dsp, y, skip, a2, bt, ct, hbuf, abuf, gst, da, sgb, sda, dbt, dct)

    return drive, k._W


def scan_loop_seconds_per_update(train: bool, d_state: int = 8, reps: int = 2000) -> float:
    """Seconds per state update of the numba scan's innermost recurrence alone, on one thread.

    Times only the hot loops on (64, 32) tiles that sit in L1 (`_recurrence`; for training also the
    backward's `_recompute` and `_adjoint`), called `reps` times from compiled code (no Python dispatch):
    no gathering of inputs, softplus, gate or scatter. It is the least a scan update costs with these
    kernels, so it bounds what a perfect rest could reach."""
    import numpy as np

    drive, W = _scan_loop_driver()
    K = 64
    rng = np.random.default_rng(0)

    def arr(*shape):
        return np.abs(rng.standard_normal(shape) * 0.1).astype(np.float32)

    dt, x, u, g, dsp, y = (arr(K, W) for _ in range(6))
    a2 = -arr(d_state, W) - 0.1  # decays exp2(dt a2) in (0, 1)
    bt, ct, h, gst, da = arr(K, d_state), arr(K, d_state), arr(d_state, W), arr(d_state, W), arr(d_state, W)
    hbuf, abuf = arr(K + 1, d_state, W), arr(K, d_state, W)
    skip, sgb, sda, dbt, dct = arr(W), arr(W), arr(W), arr(K, d_state), arr(K, d_state)
    args = (dt, x, u, g, dsp, y, a2, bt, ct, h, gst, da, hbuf, abuf, skip, sgb, sda, dbt, dct)
    drive(1, train, *args)  # compiles on the first call in this process; a warm-up after that
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        drive(reps, train, *args)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best / (K * W * d_state)


def _pair(shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(shape, generator=g).to(device), torch.rand(shape, generator=g).to(device)


def forward_case(name: str, shape: tuple[int, ...], device: torch.device, bf16: bool):
    """(run, warm-up, flop counter) for one no-grad forward of `name` on a pair of `shape`."""
    model = create_model(name).to(device).eval()
    if bf16:  # as neurofuse runs it: layers whose bf16 kernel is faulty here in fp32
        guard_bf16(model, device)

    def make(s):
        a, b = _pair(s, device)

        @torch.no_grad()
        def run():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                model(a, b)

        return run

    return model, make


def train_case(name: str, shape: tuple[int, ...], device: torch.device, bf16: bool):
    """One optimiser step (forward, the paper's loss, backward, Adam) of `name` on a batch of `shape`."""
    torch.manual_seed(0)
    model = create_model(name).to(device).train()
    if bf16:
        guard_bf16(model, device, backward=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    a, b = _pair(shape, device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = model.training_loss(a, b)
        loss.backward()
        opt.step()

    return step


def profile_step(device: torch.device, batch: int, crop: int) -> list[tuple[str, float, float]]:
    """Self CPU (or CUDA) time of one 2D training step grouped into categories: (category, ms, share)."""
    from torch.profiler import ProfilerActivity, profile

    step = train_case("clinicalfmamba_2d", (batch, 1, crop, crop), device, False)
    step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
        _sync(device)
    totals: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        t = ev.self_device_time_total if device.type == "cuda" else ev.self_cpu_time_total
        name = ev.key.lower()
        cat = next((c for c, keys in CATEGORIES if any(k in name for k in keys)), "other")
        totals[cat] += t / 1000.0
    total = sum(totals.values())
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
    print("\nTop ops by self CPU time:")
    for ev in top:
        print(f"  {ev.key[:48]:<48} {ev.self_cpu_time_total / 1000:9.1f} ms  x{ev.count}")
    return sorted(((c, ms, ms / total) for c, ms in totals.items()), key=lambda r: -r[1])


COLUMNS = ("case", "precision", "time_ms", "gflop", "peak_gflops", "floor_ms", "share_of_floor")
CEILING_COLUMNS = ("counted_alone_ms", "ceiling_share")


SCAN_COLUMNS = ("scan_gupdates", "scan_loop_ms", "bound_share")


def _add_ceiling(row: dict, fn, device: torch.device, repeats: int, top: int = 6) -> None:
    """Adds the kernel ceiling of `fn` to `row` and prints its slowest counted ops."""
    sec, ops = kernel_ceiling(fn, device, repeats)
    row["counted_alone_ms"] = round(sec * 1000, 1)
    row["ceiling_share"] = round(row["floor_ms"] / 1000 / sec, 3)
    print(f"    counted ops alone: {sec * 1000:,.0f} ms ({len(ops)} distinct calls), so at most "
          f"{row['ceiling_share']:.0%} of the floor with these kernels; slowest:", flush=True)
    for desc, n, t, flops in ops[:top]:
        print(f"      {n:3d} x {t * 1000:8.2f} ms  {flops / max(t, 1e-12) / 1e9:7.1f} GFLOP/s  {desc[:120]}")


def _add_scan_bound(row: dict, updates: int, per_update: float, threads: int) -> None:
    """Adds the bound with the scan: floor / (counted ops alone + the scan's recurrence alone).

    The recurrence time assumes perfect scaling over `threads` (its channel blocks are independent), so
    the bound is optimistic: the share this case could reach if everything but the counted kernels and
    the scan's innermost loop cost nothing."""
    loop = updates * per_update / max(1, threads)
    row["scan_gupdates"] = round(updates / 1e9, 3)
    row["scan_loop_ms"] = round(loop * 1000, 1)
    row["bound_share"] = round(row["floor_ms"] / (row["counted_alone_ms"] + loop * 1000), 3)
    print(f"    scan: {updates / 1e9:.3f} G state updates; its recurrence alone {loop * 1000:,.0f} ms, so at most "
          f"{row['bound_share']:.0%} of the floor with the counted kernels and this scan", flush=True)


def run_cases(device: torch.device, precisions: list[str], repeats: int, only: str | None,
              ceiling: bool = False) -> list[dict]:
    rows = []
    threads = torch.get_num_threads()
    per_update = {}  # the numba scan's recurrence cost, for the bound with the scan (CPU; the scan runs in fp32)
    if ceiling and device.type == "cpu" and "numba" in available_backends():
        per_update = {train: scan_loop_seconds_per_update(train) for train in (False, True)}
        print(f"  scan recurrence alone, one thread: {1e-9 / per_update[False]:.2f} G updates/s forward, "
              f"{1e-9 / per_update[True]:.2f} G/s forward + backward", flush=True)
    fwd = [("2D forward 128x128", "clinicalfmamba_2d", (1, 1, 128, 128), 1),
           ("2D forward 256x256", "clinicalfmamba_2d", (1, 1, 256, 256), 1),
           ("3D forward 128^3", "clinicalfmamba_3d", (1, 1, 128, 128, 128), 8)]
    train = [("2D training step 8 x 128x128", "clinicalfmamba_2d", (8, 1, 128, 128)),
             ("3D training step 64^3", "clinicalfmamba_3d", (1, 1, 64, 64, 64))]
    for prec in precisions:
        bf16 = prec == "bf16"
        for label, name, shape, scale in fwd:
            if only and not label.lower().startswith(only):
                continue
            _, make = forward_case(name, shape, device, bf16)
            count_shape = shape if scale == 1 else (*shape[:2], *(s // 2 for s in shape[2:]))
            flops = count_flops(make(count_shape)) * scale
            small = (*shape[:2], *(min(s, 32) for s in shape[2:]))  # the 3D warm-up need not be 128^3
            run, warm = make(shape), make(small) if scale > 1 else None
            peak = matmul_peak(device, DTYPES[prec])
            sec = _time(run, device, 1 if scale > 1 and device.type == "cpu" else repeats, warmup=warm)
            rows.append(_row(label, prec, sec, flops, peak))
            if ceiling:
                _add_ceiling(rows[-1], run, device, repeats)
                if per_update:
                    _add_scan_bound(rows[-1], scan_updates(make(count_shape)) * scale, per_update[False], threads)
        for label, name, shape in train:
            if only and not label.lower().startswith(only):
                continue
            step = train_case(name, shape, device, bf16)
            flops = count_flops(step)
            peak = matmul_peak(device, DTYPES[prec])
            sec = _time(step, device, repeats)
            rows.append(_row(label, prec, sec, flops, peak))
            if ceiling:
                _add_ceiling(rows[-1], step, device, repeats)
                if per_update:
                    _add_scan_bound(rows[-1], scan_updates(step), per_update[True], threads)
    return rows


def _row(label: str, prec: str, sec: float, flops: int, peak: float) -> dict:
    floor = flops / peak
    row = {"case": label, "precision": prec, "time_ms": round(sec * 1000, 1), "gflop": round(flops / 1e9, 2),
           "peak_gflops": round(peak / 1e9, 1), "floor_ms": round(floor * 1000, 1),
           "share_of_floor": round(floor / sec, 3)}
    print(f"  {label} {prec}: {row['time_ms']:,.0f} ms, {row['gflop']:,.1f} GFLOP, peak {row['peak_gflops']:,.0f} "
          f"GFLOP/s, floor {row['floor_ms']:,.0f} ms, {row['share_of_floor']:.0%} of floor", flush=True)
    return row


def markdown(rows: list[dict], header: list[str]) -> str:
    ceiling = bool(rows) and all("ceiling_share" in r for r in rows)
    scan = ceiling and all("bound_share" in r for r in rows)
    extra = " counted ops alone (ms) | kernel ceiling |" if ceiling else ""
    extra += " scan G updates | scan recurrence alone (ms) | bound with the scan |" if scan else ""
    lines = [*header, "", "| case | precision | time (ms) | GFLOP (counted) | matmul peak before it (GFLOP/s) "
             "| floor (ms) | share of floor |" + extra,
             "|---|---|---|---|---|---|---|" + "---|" * (2 * ceiling + 3 * scan)]
    for r in rows:
        cells = (f"| {r['case']} | {r['precision']} | {r['time_ms']:,.0f} | {r['gflop']:,.1f} | "
                 f"{r['peak_gflops']:,.0f} | {r['floor_ms']:,.0f} | {r['share_of_floor']:.0%} |")
        if ceiling:
            cells += f" {r['counted_alone_ms']:,.0f} | {r['ceiling_share']:.0%} |"
        if scan:
            cells += f" {r['scan_gupdates']:.3f} | {r['scan_loop_ms']:,.0f} | {r['bound_share']:.0%} |"
        lines.append(cells)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=("2d", "3d"), default=None, help="run only the 2D or the 3D cases")
    ap.add_argument("--no-bf16", action="store_true", help="skip bf16 even where it is native")
    ap.add_argument("--out", type=Path, default=None, help="write model.md and model.csv here")
    ap.add_argument("--note", default="", help="a line about the run's conditions for the Markdown table")
    ap.add_argument("--profile", action="store_true", help="also profile one 2D training step (8 x 128^2)")
    ap.add_argument("--ceiling", action="store_true",
                    help="also replay each case's counted ops alone: the highest share these kernels allow")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cpu, flags = cpu_description()
    precisions = ["fp32"] + (["bf16"] if native_bf16(device.type) and not args.no_bf16 else [])
    peaks = {p: matmul_peak(device, DTYPES[p]) for p in precisions}
    header = [
        f"Machine: {cpu}; flags: {' '.join(flags) or 'none of ' + ', '.join(FLAGS_SHOWN)}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
        f"scan backends {', '.join(available_backends())}.",
        "Matmul peak at the start of this run (best 2048^3 torch.mm; re-measured before every case): "
        + ", ".join(f"{p} {v / 1e9:,.0f} GFLOP/s" for p, v in peaks.items())
        + ("" if "bf16" in peaks else " (bf16 not native here: not run)") + ".",
        "Floor = counted FLOPs / that peak; share = floor / time. FlopCounterMode counts matmul and "
        "convolution only (not the selective scan, elementwise ops, norms or the optimiser). 3D forward FLOPs "
        "counted at 64^3 x 8. Time: median of the repeats after a warm-up (one run for the 3D forward).",
    ]
    if args.note:
        header.append(args.note)
    print("\n".join(header), flush=True)
    rows = run_cases(device, precisions, args.repeats, args.only, args.ceiling)
    with_bound = args.ceiling and bool(rows) and all("bound_share" in r for r in rows)
    if args.ceiling:
        header.append("Kernel ceiling = floor / (the case's counted ops, each replayed alone on fresh tensors of the "
                      "same shapes and strides): the most share of the floor these convolution and matmul kernels "
                      "allow even if everything else cost nothing.")
        if with_bound:
            header.append("Bound with the scan = floor / (counted ops alone + the scan's state updates at the speed "
                          "of its numba recurrence alone, timed on L1-resident tiles on one thread and divided by "
                          "the thread count): the most share these kernels allow if gathering, softplus, gate, "
                          "conv1d, copies, norms and elementwise work cost nothing.")
    peak_end = matmul_peak(device, torch.float32)
    header.append(f"fp32 matmul peak re-measured after the cases: {peak_end / 1e9:,.0f} GFLOP/s "
                  "(a large change means the machine's load changed during the run).")
    text = markdown(rows, header)
    print("\n" + text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "model.md").write_text(text, encoding="utf-8")
        with (args.out / "model.csv").open("w", newline="", encoding="utf-8") as fh:
            extra = (CEILING_COLUMNS if args.ceiling else ()) + (SCAN_COLUMNS if with_bound else ())
            w = csv.DictWriter(fh, fieldnames=COLUMNS + extra)
            w.writeheader()
            w.writerows(rows)
        print(f"wrote {args.out / 'model.md'} and {args.out / 'model.csv'}")
    if args.profile:
        cats = profile_step(device, 8, 128)
        print("\n| category | self time (ms) | share |\n|---|---|---|")
        for c, ms, share in cats:
            print(f"| {c} | {ms:,.0f} | {share:.0%} |")


if __name__ == "__main__":
    main()
