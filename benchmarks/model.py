"""ClinicalFMamba speed: parameters, forward latency (2D 128^2 and 256^2 pairs, a 3D 128^3 volume; fp32 and
bf16 autocast) and one 2D training step (batch 8 of 96x96 crops), measured in one run; optional
torch.profiler breakdown of a training step (scan vs copies vs convs vs matmuls).

    .venv/bin/python benchmarks/model.py [--device cpu] [--threads N] [--repeats 3] [--no-3d] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

from neurofuse.models import create_model
from neurofuse.ssm.scan import available_backends

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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (kernel compilation, allocator)
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def forward_latency(name: str, shape: tuple[int, ...], device: torch.device, bf16: bool, repeats: int) -> float:
    model = create_model(name).to(device).eval()
    a, b = torch.rand(shape, device=device), torch.rand(shape, device=device)

    @torch.no_grad()
    def run():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            model(a, b)

    return _time(run, device, repeats)


def _train_setup(device: torch.device, batch: int, crop: int):
    torch.manual_seed(0)
    model = create_model("clinicalfmamba_2d").to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    a = torch.rand(batch, 1, crop, crop, device=device)
    b = torch.rand(batch, 1, crop, crop, device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss, _ = model.training_loss(a, b)
        loss.backward()
        opt.step()

    return step


def profile_step(device: torch.device, batch: int, crop: int) -> list[tuple[str, float, float]]:
    """Self CPU (or CUDA) time of one training step grouped into categories: (category, ms, share)."""
    from torch.profiler import ProfilerActivity, profile

    step = _train_setup(device, batch, crop)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-3d", action="store_true", help="skip the 128^3 volume")
    ap.add_argument("--profile", action="store_true", help="also profile one 2D training step")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=96)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"scan backends {available_backends()}")
    rows = []
    for name in ("clinicalfmamba_2d", "clinicalfmamba_3d"):
        params = sum(p.numel() for p in create_model(name).parameters())
        rows.append((f"{name} parameters", f"{params:,}"))
    cases = [("2D pair 128x128", "clinicalfmamba_2d", (1, 1, 128, 128)),
             ("2D pair 256x256", "clinicalfmamba_2d", (1, 1, 256, 256))]
    if not args.no_3d:
        cases.append(("3D volume 128^3", "clinicalfmamba_3d", (1, 1, 128, 128, 128)))
    for label, name, shape in cases:
        for bf16 in (False, True):
            reps = 1 if len(shape) == 5 and device.type == "cpu" else args.repeats
            sec = forward_latency(name, shape, device, bf16, reps)
            rows.append((f"forward {label} {'bf16' if bf16 else 'fp32'}", f"{sec * 1000:,.0f} ms"))
            print(f"  {rows[-1][0]}: {rows[-1][1]}", flush=True)
    step = _train_setup(device, args.batch, args.crop)
    sec = _time(step, device, args.repeats)
    rows.append((f"train step 2D fp32, batch {args.batch} x {args.crop}^2", f"{sec * 1000:,.0f} ms"))
    print("\n| measurement | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    if args.profile:
        cats = profile_step(device, args.batch, args.crop)
        print("\n| category | self time (ms) | share |\n|---|---|---|")
        for c, ms, share in cats:
            print(f"| {c} | {ms:,.0f} | {share:.0%} |")


if __name__ == "__main__":
    main()
