"""Selective-scan benchmark: forward and forward+backward time of every backend vs the reference.

    python benchmarks/scan.py            # L 1024/4096/16384, d_state 8/16, batch 1/4, d_inner 256
    python benchmarks/scan.py --quick    # L 1024/4096 only
Prints a Markdown table (and writes CSV with --csv): milliseconds (best of --reps; the slow
reference best of --ref-reps after a warm-up call), the ratio reference/backend measured in the
same run, and the achieved
state updates per second (batch * d_inner * L * d_state / time) as a fraction of a rough CPU peak.

Rough peak (an assumption, stated so the fraction can be read): the forward's hot loop issues 17 vector
instructions per 8 state updates (the exponent dt A, then 2**x by range reduction and a degree-6
polynomial: 14; applying the decay, the input and the output: 3). This core runs at most 3 vector ALU
instructions per cycle at 256 bits (the width LLVM picks here), so 2 cores x 3 x 8 lanes / 17 at ~3 GHz
= 8.5e9 state updates/s. Gathering the inputs, softplus and the gate come on top of that bound. A
forward+backward costs about 3 such passes.
"""

from __future__ import annotations

import argparse
import csv
import time

import torch

from neurofuse.ssm import available_backends, selective_scan

PEAK_UPDATES_PER_S = 8.5e9
D_INNER = 256


def make_inputs(batch: int, d_state: int, L: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(batch, D_INNER, L, generator=g),  # u
        torch.randn(batch, D_INNER, L, generator=g) * 0.5,  # delta (raw; softplus + bias below)
        -torch.rand(D_INNER, d_state, generator=g) - 0.2,  # A
        torch.randn(batch, d_state, L, generator=g),  # B
        torch.randn(batch, d_state, L, generator=g),  # C
        torch.randn(D_INNER, generator=g),  # D
        torch.randn(batch, D_INNER, L, generator=g),  # z
        torch.randn(D_INNER, generator=g) * 0.5,  # delta_bias
    ]


def time_call(fn, reps: int) -> float:
    """Best wall time in ms over `reps` calls (after one warm-up call when reps > 1)."""
    if reps > 1:
        fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def bench(backend: str, inputs: list[torch.Tensor], reps: int) -> tuple[float, float]:
    def fwd():
        with torch.no_grad():
            selective_scan(*inputs, delta_softplus=True, backend=backend)

    leaves = [t.clone().requires_grad_() for t in inputs]

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        selective_scan(*leaves, delta_softplus=True, backend=backend).sum().backward()

    return time_call(fwd, reps), time_call(fwd_bwd, reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="L in {1024, 4096} only")
    parser.add_argument("--reps", type=int, default=3, help="repetitions for the fast backends (best of)")
    parser.add_argument("--ref-reps", type=int, default=2,
                        help="repetitions for the reference (best of, after a warm-up call; a cold first call "
                             "of the Python loop can take twice as long and would inflate the ratios)")
    parser.add_argument("--backends", default=",".join(b for b in available_backends() if b != "reference"))
    parser.add_argument("--csv", default=None, help="also write the table as CSV here")
    args = parser.parse_args()
    lengths = (1024, 4096) if args.quick else (1024, 4096, 16384)
    backends = [b for b in args.backends.split(",") if b]
    rows = []
    print(f"threads: torch {torch.get_num_threads()}; backends: reference, {', '.join(backends)}")
    print("| L | d_state | batch | backend | fwd ms | fwd x | fwd+bwd ms | fwd+bwd x | fwd updates/s (% peak) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for L in lengths:
        for d_state in (8, 16):
            for batch in (1, 4):
                inputs = make_inputs(batch, d_state, L)
                ref_f, ref_fb = bench("reference", inputs, reps=args.ref_reps)
                updates = batch * D_INNER * L * d_state
                for name in ["reference", *backends]:
                    f, fb = (ref_f, ref_fb) if name == "reference" else bench(name, inputs, args.reps)
                    rate = updates / (f / 1e3)
                    row = dict(L=L, d_state=d_state, batch=batch, backend=name, fwd_ms=round(f, 2),
                               fwd_speedup=round(ref_f / f, 1), fwd_bwd_ms=round(fb, 2),
                               fwd_bwd_speedup=round(ref_fb / fb, 1), fwd_updates_per_s=f"{rate:.3g}",
                               fwd_pct_peak=round(100 * rate / PEAK_UPDATES_PER_S, 1))  # fmt: skip
                    rows.append(row)
                    print(f"| {L} | {d_state} | {batch} | {name} | {f:.1f} | {ref_f / f:.1f} | {fb:.1f} | "
                          f"{ref_fb / fb:.1f} | {rate:.3g} ({row['fwd_pct_peak']}%) |", flush=True)  # fmt: skip
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
