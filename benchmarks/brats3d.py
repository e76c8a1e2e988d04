"""3D fusion table on BraTS cases: T2 + FLAIR fused on the model's 128^3 grid, both metric presets.

    python benchmarks/brats3d.py --data ../shared/data --out docs/results/brats3d
    python benchmarks/brats3d.py --data ROOT --method clinicalfmamba -O weights=runs/x/best.safetensors
    python benchmarks/brats3d.py --data ROOT --method average \
        --learned "ClinicalFMamba-3D=clinicalfmamba:runs/a/best.safetensors" \
        --learned "ClinicalFMamba-3D single scan=clinicalfmamba:runs/b/best.safetensors"

Every case under `--data` (BraTS 2019 or 2021/2023 layout) is cropped to its brain box, resampled
to the grid and normalised (`neurofuse.brats.preprocess_case`), fused by each method, and measured
with the 3D metrics of the paper (PSNR, MS-SSIM, EN; EN_unique as the paper computed EN) in the
`clinicalfmamba` and `standard` presets. Prints the table (mean over cases) and writes CSV, Markdown
and `grid.png` (central axial, coronal and sagittal slices of every case: inputs and each method).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from neurofuse.benchmark import write_grid
from neurofuse.brats import PreprocessConfig, discover, preprocess_case
from neurofuse.cli.fuse import method_options
from neurofuse.evaluate import markdown_table
from neurofuse.fusion import fuse, list_methods
from neurofuse.io import write_csv, write_text
from neurofuse.metrics import compute_metrics
from neurofuse.metrics.presets import flag_marked, flag_notes

METRICS = ("PSNR", "MS_SSIM", "EN", "EN_unique")


def _central_slices(vol: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal and sagittal central slices of a (x, y, z) volume, rotated for display."""
    cx, cy, cz = (n // 2 for n in vol.shape)
    return [np.rot90(vol[:, :, cz]), np.rot90(vol[:, cy, :]), np.rot90(vol[cx, :, :])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--method", action="append", default=None, help="methods (default: every classical one)")
    ap.add_argument("-O", "--option", action="append", default=[], help="KEY=VALUE for learned methods")
    ap.add_argument(
        "--learned",
        action="append",
        default=[],
        metavar="LABEL=METHOD:WEIGHTS",
        help="a row LABEL: learned METHOD with these weights (repeatable; e.g. an ablation)",
    )
    args = ap.parse_args()
    opts = method_options(tuple(args.option))
    kinds = {x.name: x.kind for x in list_methods()}
    # (row label, method, options)
    entries = [
        (m, m, opts if kinds.get(m) == "learned" else {})
        for m in (args.method or [m.name for m in list_methods("classical")])
    ]
    for spec in args.learned:
        label, sep, rest = spec.partition("=")
        method, sep2, weights = rest.partition(":")
        if not (sep and sep2 and label and method and weights):
            ap.error(f"--learned {spec!r}: expected LABEL=METHOD:WEIGHTS")
        entries.append((label, method, {**opts, "weights": weights}))
    cases = discover(args.data, require=("t2", "flair"))
    cfg = PreprocessConfig(size=args.size)
    vols = {c.id: preprocess_case(c, cfg) for c in cases}
    rows = []
    views = {"T2": [x for v in vols.values() for x in _central_slices(v["t2"])],
             "FLAIR": [x for v in vols.values() for x in _central_slices(v["flair"])]}
    for label, m, kw in entries:
        views[label] = []
        for cid, v in vols.items():
            t0 = time.perf_counter()
            f = fuse(v["t2"], v["flair"], m, **kw)
            seconds = time.perf_counter() - t0
            views[label] += _central_slices(f)
            for preset in ("clinicalfmamba", "standard"):
                vals = compute_metrics(v["t2"], v["flair"], f, metrics=METRICS, preset=preset)
                rows.append({"method": label, "case": cid, "preset": preset, "seconds": round(seconds, 3), **vals})
    lines = [f"# 3D fusion, T2 + FLAIR at {args.size}^3: {len(vols)} case(s) ({', '.join(vols)})", ""]
    for preset in ("clinicalfmamba", "standard"):
        table = []
        for m, _, _ in entries:
            sel = [r for r in rows if r["method"] == m and r["preset"] == preset]
            cells = [f"{np.mean([r[k] for r in sel]):.4g}" for k in METRICS]
            table.append([m, *cells, f"{np.mean([r['seconds'] for r in sel]):.2f}"])
        lines += [f"## Preset `{preset}` (mean over cases)", ""]
        lines += markdown_table(["method", *map(flag_marked, METRICS), "s/volume"], table) + [""]
    per_case = [[r["method"], r["case"], *(f"{r[k]:.4g}" for k in METRICS), f"{r['seconds']:.2f}"]
                for r in rows if r["preset"] == "clinicalfmamba"]
    lines += ["## Per case, preset `clinicalfmamba`", ""]
    lines += markdown_table(["method", "case", *map(flag_marked, METRICS), "s/volume"], per_case) + [""]
    lines += [*flag_notes(METRICS), ""]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_csv(args.out / "per_case.csv", rows)
        write_text(args.out / "summary.md", text + "\n")
        write_grid(args.out / "grid.png", list(views), list(views.values()))


if __name__ == "__main__":
    main()
