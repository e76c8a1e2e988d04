"""Seconds per pair per metric: N average-fused Harvard SPECT-MRI val pairs (256x256) and one 128^3 volume.

Usage: python benchmarks/metrics.py [--n 100] [--preset standard] [--no-volume]
       python benchmarks/metrics.py --table   (all metrics, whole val split, both presets: mean +- std)
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from neurofuse.evaluate import load01, summarize, summary_markdown
from neurofuse.metrics import compute_metrics
from neurofuse.metrics.presets import ALL_2D, ALL_3D

DATA = Path(__file__).resolve().parents[1] / "../shared/data"


def val_pairs(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first n SPECT-MRI validation pairs (MRI gray, SPECT Y) in [0, 1], cycling if n > split size (0: all)."""
    root = DATA / "harvard/SPECT-MRI"
    with open(root / "split.csv") as fh:
        ids = [r["id"] for r in csv.DictReader(fh) if r["split"] == "val"]
    if n <= 0:
        n = len(ids)
    pairs = [(load01(root / "MRI" / f"{i}.png"), load01(root / "SPECT" / f"{i}.png")) for i in ids]
    return [pairs[k % len(pairs)] for k in range(n)]


def volume() -> tuple[np.ndarray, np.ndarray]:
    """T2 and FLAIR of the BraTS 2019 case, centre-cropped to 128^3, min-max to [0, 1]."""
    d = DATA / "brats2019/LGG/BraTS19_TCIA10_130_1"
    vols = []
    for mod in ("t2", "flair"):
        v = load01(d / f"BraTS19_TCIA10_130_1_{mod}.nii.gz")
        c = [(s - 128) // 2 for s in v.shape]
        v = v[c[0] : c[0] + 128, c[1] : c[1] + 128, c[2] : c[2] + 128]
        vols.append((v - v.min()) / (v.max() - v.min()))
    return vols[0], vols[1]


def time_metrics(pairs, names, preset: str) -> dict[str, float]:
    """Mean seconds per pair for each metric (average fusion F = (A + B) / 2)."""
    tot = dict.fromkeys(names, 0.0)
    for a, b in pairs:
        f = 0.5 * (a + b)
        for m in names:
            t = time.perf_counter()
            compute_metrics(a, b, f, [m], preset)
            tot[m] += time.perf_counter() - t
    return {m: v / len(pairs) for m, v in tot.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="number of 256x256 pairs")
    ap.add_argument("--preset", default="standard")
    ap.add_argument("--no-volume", action="store_true", help="skip the 128^3 volume")
    ap.add_argument("--table", action="store_true", help="print the metric table of the whole val split instead")
    args = ap.parse_args()
    if args.table:
        pairs = val_pairs(0)
        for preset in ("standard", "clinicalfmamba"):
            rows = [compute_metrics(a, b, 0.5 * (a + b), ALL_2D, preset) for a, b in pairs]
            title = f"average fusion, Harvard SPECT-MRI val ({len(pairs)} pairs), preset {preset}"
            print(summary_markdown(summarize(rows), title))
        return
    pairs = val_pairs(args.n)
    compute_metrics(*pairs[0], 0.5 * (pairs[0][0] + pairs[0][1]), ALL_2D, args.preset)  # warm-up (numba, FFT plans)
    t2d = time_metrics(pairs, ALL_2D, args.preset)
    print(f"2D: {args.n} pairs of 256x256, preset {args.preset}: seconds per pair")
    for m, v in t2d.items():
        print(f"  {m:<10} {v:8.4f}")
    print(f"  {'TOTAL':<10} {sum(t2d.values()):8.4f}")
    if not args.no_volume:
        t3d = time_metrics([volume()], ALL_3D, args.preset)
        print(f"3D: one 128^3 volume (BraTS T2 + FLAIR), preset {args.preset}: seconds")
        for m, v in t3d.items():
            print(f"  {m:<10} {v:8.4f}")
        print(f"  {'TOTAL':<10} {sum(t3d.values()):8.4f}")


if __name__ == "__main__":
    main()
