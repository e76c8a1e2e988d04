"""`neurofuse benchmark`: every method on one split, timed and measured by the same metrics.

For a pair folder in any layout `neurofuse.layouts` knows (Harvard `MRI/` + `CT|SPECT|PET/`, CDDFuse,
EMFusion, IFCNN `{id}_1`/`{id}_2`; `split.csv` for train/val/test, none for `all`) it fuses every pair
of the split with each method, times the fusion call alone (per-pair latency and throughput, after
one untimed warm-up pair), computes the metrics in each preset and writes:
- `per_image.csv`: method, id, preset, latency and every metric;
- `summary_<preset>.csv` and `summary.md`: mean +- std per method, laid out like the paper's table
  (PSNR, SSIM, FMI, FSIM, EN, then the rest), with parameters and timing;
- `grid.png`: the same few pairs fused by every method (colour for SPECT/PET), and `bars.png`.
Learned methods run with the shipped weights for the pair set (`pretrained=<tag>`, the tag named by
`pair` or the modality folder names); a method without weights for it is skipped and listed as such.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw
from tqdm import tqdm

from neurofuse.errors import InputError, NeurofuseError, UsageError
from neurofuse.evaluate import MeanStd, markdown_table, mean_std
from neurofuse.fusion import fuse, get_method, list_methods
from neurofuse.io import atomic_write_path, natural_key, read_image, write_csv, write_text
from neurofuse.layouts import PairSet, find_pairs, select_split
from neurofuse.metrics import compute_metrics, get_preset
from neurofuse.metrics.presets import flag_marked, flag_notes, headline_order
from neurofuse.pipeline import fusion_inputs, infer_pair, merge_colour
from neurofuse.shards import Shard

MAIN_METRICS = ("PSNR", "SSIM", "FMI", "FSIM", "EN")
PRESETS = ("clinicalfmamba", "standard")


@dataclass
class MethodResult:
    """Everything measured for one method."""

    name: str
    kind: str
    params: int | None = None
    latencies: list[float] = field(default_factory=list)
    metrics: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # preset -> rows
    skipped: str | None = None


def resolve_methods(spec: str) -> list[str]:
    """'all', 'classical', 'learned' or a comma-separated list of 2D method names."""
    if spec in ("all", "classical", "learned"):
        kind = None if spec == "all" else spec
        return [m.name for m in list_methods(kind) if 2 in m.spatial_dims]
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        get_method(n)
    return names


def _count_params(method: str) -> int | None:
    """Parameters of the 2D network a learned method runs (0 for classical methods)."""
    m = get_method(method)
    if m.kind == "classical":
        return 0
    if 2 not in m.models:
        return None
    from neurofuse.models import create_model

    return sum(p.numel() for p in create_model(m.models[2]).parameters())


def pair_tag(ps: PairSet, pair: str | None = None) -> str | None:
    """Shipped-weights tag for learned methods: `pair`, else from the modality folder names (as `fuse`
    guesses it from file names: `SPECT/` -> spect-mri), else from the data folder's name; None if unsaid."""
    if pair is not None:
        return pair
    names = [f"{ps.name_a}_{ps.name_b}"] + ([ps.root.name] if ps.root is not None else [])
    return next((t for t in (infer_pair(n) for n in names) if t is not None), None)


def run_benchmark(
    data: str | Path | None,
    out: str | Path,
    split: str = "val",
    methods: str = "all",
    limit: int | None = None,
    grid_rows: int = 4,
    presets: tuple[str, ...] = PRESETS,
    method_options: dict | None = None,
    *,
    a: str | Path | None = None,
    b: str | Path | None = None,
    pattern: tuple[str, str] | None = None,
    pair: str | None = None,
    split_file: str | Path | None = None,
    shard: Shard | None = None,
    progress: bool = True,
) -> list[MethodResult]:
    """Run the benchmark and write its tables and figures into `out` (created).

    The pairs come from `data` (any layout of `neurofuse.layouts.find_pairs`) or the folders `a`, `b`;
    files without a partner are named in a warning. Learned methods use the shipped weights `pretrained=`
    `pair` (default: named by the modality folders; none named: each model's default weights) unless
    `method_options` gives `weights`/`pretrained`; a method without weights for the tag is skipped
    (`MethodResult.skipped` says why). `shard` runs every N-th pair only (`neurofuse merge` joins them).
    """
    out = Path(out)
    method_options = dict(method_options or {})
    if "pretrained" in method_options and "weights" not in method_options:  # -O pretrained=TAG: the tag
        pair = pair or str(method_options.pop("pretrained"))
    ps = find_pairs(data, a, b, pattern)
    if (msg := ps.unpaired_message()) is not None:
        warnings.warn(msg, stacklevel=2)
    modality = ps.name_b
    pairs = select_split(ps, split, split_file)
    if limit is not None:
        if limit < 1:
            raise UsageError(f"limit={limit}: give a positive number of pairs")
        pairs = pairs[:limit]
    if shard is not None:
        pairs = shard.take(pairs)
    if not pairs:
        raise InputError(f"{ps.where}: split {split!r} holds no pairs" + (f" for {shard.label}" if shard else ""))
    out.mkdir(parents=True, exist_ok=True)
    tag = pair_tag(ps, pair)
    user_weights = "weights" in method_options
    names = resolve_methods(methods)
    images = [(i, read_image(pa), read_image(pb)) for i, pa, pb in pairs]
    inputs = [fusion_inputs(a, b) for _, a, b in images]
    grid_idx = np.linspace(0, len(images) - 1, min(grid_rows, len(images))).round().astype(int).tolist()
    grid: dict[str, list[np.ndarray]] = {}
    results: list[MethodResult] = []
    bar = tqdm(total=len(names) * len(images), desc="benchmark", unit="pair", disable=not progress)
    for name in names:
        m = get_method(name)
        res = MethodResult(name, m.kind)
        pretrained = {} if tag is None or user_weights else {"pretrained": tag}
        opts = {} if m.kind == "classical" else {**pretrained, **method_options}
        try:
            fuse(*inputs[0], name, **opts)  # warm-up (also loads weights), not timed
        except NeurofuseError as exc:  # no shipped weights for this pair set: skipped, listed as such
            if m.kind == "classical" or user_weights or set(method_options) - {"device", "precision"}:
                bar.close()
                raise  # the user's own weights/options failed: an error, not a skip
            res.skipped = str(exc)
            results.append(res)
            bar.update(len(images))
            continue
        res.params = _count_params(name)
        res.metrics = {p: [] for p in presets}
        bar.set_postfix_str(name)
        for k, ((id_, a_img, b_img), (ya, yb)) in enumerate(zip(images, inputs, strict=True)):
            t0 = time.perf_counter()
            f = fuse(ya, yb, name, **opts)
            res.latencies.append(time.perf_counter() - t0)
            for p in presets:
                res.metrics[p].append({"id": id_, **metrics_or_nan(ya, yb, f, p)})
            if k in grid_idx:
                grid.setdefault(name, []).append(merge_colour(f, a_img, b_img))
            bar.update(1)
        results.append(res)
    bar.close()
    data = Path(ps.root) if ps.root is not None else Path(ps.where)
    if all(r.skipped for r in results):
        raise InputError(f"{ps.where}: no method could run ({results[0].name}: {results[0].skipped})")
    run = {"data": str(data), "split": split, "pairs": len(images), "presets": list(presets),
           "shard": None if shard is None else [shard.index, shard.count]}
    write_tables(out, results, run)
    sources = [
        [merge_colour(inputs[k][0], images[k][1], images[k][1]) for k in grid_idx],
        [merge_colour(inputs[k][1], images[k][1], images[k][2]) for k in grid_idx],
    ]
    titles, columns = [ps.name_a, modality] + list(grid), sources + list(grid.values())
    write_grid(out / "grid.png", titles, columns)
    write_cells(out / "images", [images[k][0] for k in grid_idx], ["A", "B", *grid], columns)
    _write_bars(out / "bars.png", results, presets[0])
    return results


def write_cells(folder: Path, ids: list[str], names: list[str], columns: list[list[np.ndarray]]) -> None:
    """The grid's cells as `folder/<A|B|method>/<id>.png` (for `neurofuse report`'s image picker)."""
    for name, cells in zip(names, columns, strict=True):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for id_, cell in zip(ids, cells, strict=True):
            with atomic_write_path(folder / name / f"{id_}.png") as tmp:
                PILImage.fromarray(np.round(np.clip(cell, 0, 1) * 255).astype(np.uint8)).save(tmp, format="PNG")


def write_tables(out: Path, results: list[MethodResult], run: dict) -> None:
    """per_image.csv, summary_<preset>.csv, summary.md, methods.csv (kind, params, skip reason) and
    run.json (data, split, pairs, presets, shard): everything `merge_benchmarks` needs to join shards."""
    _write_per_image(out / "per_image.csv", results)
    for p in run["presets"]:
        _write_summary_csv(out / f"summary_{p}.csv", results, p)
    _write_markdown(out / "summary.md", results, run["presets"], Path(run["data"]), run["split"], run["pairs"])
    write_csv(out / "methods.csv", [{"method": r.name, "kind": r.kind, "params": "" if r.params is None else r.params,
                                     "skipped": r.skipped or ""} for r in results],
              ["method", "kind", "params", "skipped"])
    write_text(out / "run.json", json.dumps(run, indent=2) + "\n")


def merge_benchmarks(shard_dirs: list[Path], out: Path) -> list[MethodResult]:
    """Join the outputs of sharded `run_benchmark` calls into `out`: the same per-image rows, in the same
    order, and so the same tables as one unsharded run (latencies are those each shard measured; grid.png
    and images/ are the first shard's). Every shard 0..N-1 must be there."""
    runs = [json.loads((d / "run.json").read_text(encoding="utf-8")) for d in shard_dirs]
    counts = {tuple(r["shard"] or (0, 1))[1] for r in runs}
    have = sorted(tuple(r["shard"] or (0, 1))[0] for r in runs)
    if len(counts) != 1 or have != list(range(counts.pop())):
        raise InputError(f"{out}: shards {', '.join(str(i) for i in have)} found; need each of 0..N-1 of one run "
                         "exactly once")
    if len({(r["data"], r["split"], tuple(r["presets"])) for r in runs}) != 1:
        raise InputError(f"{out}: the shards come from different runs (data, split or presets differ)")
    import csv

    methods = list(csv.DictReader(open(shard_dirs[0] / "methods.csv", newline="", encoding="utf-8")))
    rows = [r for d in shard_dirs for r in csv.DictReader(open(d / "per_image.csv", newline="", encoding="utf-8"))]
    presets = runs[0]["presets"]
    results = []
    for m in methods:
        res = MethodResult(m["method"], m["kind"], int(m["params"]) if m["params"] else None,
                           skipped=m["skipped"] or None)
        mine = sorted((r for r in rows if r["method"] == res.name), key=lambda r: natural_key(r["id"]))
        for p in ([] if res.skipped else presets):
            prow = [r for r in mine if r["preset"] == p]
            res.metrics[p] = [{"id": r["id"], **{k: float(v) for k, v in r.items()  # "": another preset's
                                                 if k not in ("method", "preset", "latency_ms", "id") and v != ""}}
                              for r in prow]
            if p == presets[0]:
                res.latencies = [float(r["latency_ms"]) / 1000.0 for r in prow]
        results.append(res)
    out.mkdir(parents=True, exist_ok=True)
    n = sum(r["pairs"] for r in runs)
    write_tables(out, results, {**runs[0], "pairs": n, "shard": None})
    if (shard_dirs[0] / "grid.png").is_file():
        with atomic_write_path(out / "grid.png") as tmp:
            shutil.copyfile(shard_dirs[0] / "grid.png", tmp)
    if (shard_dirs[0] / "images").is_dir():
        shutil.copytree(shard_dirs[0] / "images", out / "images", dirs_exist_ok=True)
    _write_bars(out / "bars.png", results, presets[0])
    return results


def metrics_or_nan(a: np.ndarray, b: np.ndarray, f: np.ndarray, preset: str) -> dict[str, float]:
    """The preset's metrics; one undefined on this triplet (e.g. SCD when F - A is constant) is NaN."""
    try:
        return compute_metrics(a, b, f, preset=preset)
    except InputError:
        out = {}
        for name in get_preset(preset).default_2d:
            try:
                out.update(compute_metrics(a, b, f, metrics=[name], preset=preset))
            except InputError:
                out[name] = float("nan")
        return out


def metric_columns(results: list[MethodResult], preset: str) -> list[str]:
    """Metric names in table order: the paper's five first, then the rest as computed, flagged ones
    (EN_unique, not comparable between float and 8-bit outputs) last."""
    seen: list[str] = []
    for r in results:
        for row in r.metrics.get(preset, [])[:1]:
            seen += [k for k in row if k != "id" and k not in seen]
    return headline_order([m for m in MAIN_METRICS if m in seen] + [m for m in seen if m not in MAIN_METRICS])


def _stats(r: MethodResult, preset: str, metric: str) -> MeanStd:
    return mean_std(row[metric] for row in r.metrics[preset])


def _timing(r: MethodResult) -> tuple[float, float]:
    lat = np.array(r.latencies)
    return float(np.median(lat) * 1000.0), float(len(lat) / lat.sum())


def _write_per_image(path: Path, results: list[MethodResult]) -> None:
    rows = []
    for r in results:
        for p, prow in r.metrics.items():
            for lat, row in zip(r.latencies, prow, strict=True):
                rows.append({"method": r.name, "preset": p, "latency_ms": lat * 1000.0, **row})
    write_csv(path, rows)


def _write_summary_csv(path: Path, results: list[MethodResult], preset: str) -> None:
    cols = metric_columns(results, preset)
    rows = []
    for r in results:
        if r.skipped:
            continue
        lat, thr = _timing(r)
        row = {"method": r.name, "kind": r.kind, "params": r.params, "latency_ms": f"{lat:.3f}",
               "pairs_per_s": f"{thr:.3f}", "n": len(r.latencies)}
        for c in cols:
            s = _stats(r, preset, c)
            row.update({f"{c}_mean": f"{s.mean:.6g}", f"{c}_std": f"{s.std:.6g}"})
        rows.append(row)
    write_csv(path, rows)


def _write_markdown(path: Path, results, presets, data: Path, split: str, n: int) -> None:
    lines = [f"# Benchmark: {data.name}, split `{split}` ({n} pairs)", ""]
    for p in presets:
        cols = metric_columns(results, p)
        rows = []
        for r in results:
            if r.skipped:
                continue
            lat, thr = _timing(r)
            cells = [_stats(r, p, c).cell(".4g", ".2g") for c in cols]
            params = "-" if r.params is None else f"{r.params:,}"
            rows.append([r.name, *cells, params, f"{lat:.2f}", f"{thr:.1f}"])
        lines += [f"## Preset `{p}` (mean ± std over pairs)", ""]
        lines += markdown_table(["method", *map(flag_marked, cols), "params", "latency (ms)", "pairs/s"], rows)
        notes = flag_notes(cols)
        lines += [""] + ([*notes, ""] if notes else [])
    skipped = [r for r in results if r.skipped]
    if skipped:
        lines += ["Skipped:", ""] + [f"- `{r.name}`: {r.skipped}" for r in skipped] + [""]
    lines.append("Mean ± sample std (ddof 1) over the pairs; a metric undefined on a pair (NaN in per_image.csv) "
                 "or infinite (PSNR of an output equal to a source: `(k inf)` in the cell) is left out of both.")
    lines.append("Latency: median wall time of the fusion call alone on [0, 1] arrays (no I/O), this machine.")
    write_text(path, "\n".join(lines) + "\n")


def write_grid(path: Path, titles: list[str], columns: list[list[np.ndarray]], header: int = 18, pad: int = 4,
               row_labels: list[str] | None = None) -> None:
    """A PNG grid: one column per title, one row per pair; gray or RGB cells in [0, 1] of one size.

    `row_labels` (one per row, may hold a line break) are written in a margin left of the first column.
    """
    h, w = columns[0][0].shape[:2]
    rows = len(columns[0])
    left = 0
    if row_labels is not None:
        if len(row_labels) != rows:
            raise UsageError(f"write_grid: {len(row_labels)} row labels for {rows} rows")
        left = 6 * max(len(line) for label in row_labels for line in label.splitlines() or [""]) + 4 + pad
    W = left + len(columns) * w + (len(columns) - 1) * pad
    H = header + rows * h + (rows - 1) * pad
    canvas = PILImage.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(canvas)
    for r, label in enumerate(row_labels or []):
        draw.multiline_text((2, header + r * (h + pad) + 2), label, fill="black")
    for c, (title, cells) in enumerate(zip(titles, columns, strict=True)):
        x = left + c * (w + pad)
        draw.text((x + 2, 2), title[: max(4, w // 7)], fill="black")
        for r, cell in enumerate(cells):
            rgb = np.repeat(cell[..., None], 3, -1) if cell.ndim == 2 else cell
            canvas.paste(
                PILImage.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)), (x, header + r * (h + pad))
            )
    with atomic_write_path(path) as tmp:
        canvas.save(tmp)


def _write_bars(path: Path, results: list[MethodResult], preset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in results if not r.skipped]
    cols = [c for c in MAIN_METRICS if c in metric_columns(done, preset)]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 3.6), squeeze=False)
    for ax, c in zip(axes[0], cols, strict=True):
        means, stds = zip(*((s.mean, s.std) for s in (_stats(r, preset, c) for r in done)), strict=True)
        ax.bar(range(len(done)), means, yerr=stds, color=["C1" if r.kind == "learned" else "C0" for r in done])
        ax.set_xticks(range(len(done)), [r.name for r in done], rotation=60, ha="right", fontsize=7)
        ax.set_title(c)
    fig.suptitle(f"preset {preset}: mean ± std (orange: learned)")
    fig.tight_layout()
    with atomic_write_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
