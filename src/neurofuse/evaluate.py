"""Evaluate fused images against their sources: one triplet, or whole folders, with summary tables.

Files are read with `neurofuse.io` and mapped to [0, 1] before the metrics see them: 2D images by
their full scale (gray or the Y channel of RGB, value / (2^bits - 1); float images already in [0, 1]
as they are; other floats by min-max), 3D volumes by per-volume min-max. A, B and F must share one
grid (shape, and for volumes the affine).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from neurofuse.errors import InputError
from neurofuse.io import Image, check_geometry, normalize01, pair_files, read_image, unit_luma, write_csv, write_text
from neurofuse.metrics import METRICS, compute_metrics, compute_metrics_image, get_preset, metric_conventions
from neurofuse.metrics.presets import ALL_2D, ALL_3D, FLAGS, flag_marked, flag_notes, headline_order


def load01(path: str | Path | Image) -> np.ndarray:
    """Read an image/volume as float64 in [0, 1]: 2D gray/Y by full scale, 3D by min-max."""
    img = path if isinstance(path, Image) else read_image(path)
    if img.spatial_dims == 2:
        return unit_luma(img)
    return normalize01(img.array, name=img.path).astype(np.float64)


def load01_color(img: Image) -> np.ndarray:
    """Like `load01`, but a colour 2D image stays RGB (H, W, 3) in [0, 1] (for the toolbox presets'
    own colour handling, `neurofuse.metrics.inputs`)."""
    if img.is_color and img.spatial_dims == 2:
        return np.clip(img.array.astype(np.float64) / (img.full_scale or 255.0), 0.0, 1.0)
    return load01(img)


def resolve_metrics(metrics: Sequence[str] | str | None, preset: str, ndim: int) -> list[str]:
    """Metric names to compute: None = the preset's default list, 'all' = every metric defined in `ndim`D."""
    if metrics is None:
        p = get_preset(preset)
        return list(p.default_2d if ndim == 2 else p.default_3d)
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    if list(metrics) == ["all"]:
        return list(ALL_2D if ndim == 2 else ALL_3D)
    return list(metrics)


def evaluate_triplet(
    path_a: str | Path, path_b: str | Path, path_f: str | Path, metrics=None, preset: str = "standard",
    slicewise: str | None = None,
) -> dict[str, float]:
    """Metrics of one fused file against its two sources."""
    images = [read_image(p) for p in (path_a, path_b, path_f)]
    for other in images[1:]:
        check_geometry(images[0], other, hint="evaluate needs A, B and F on one grid")
    if get_preset(preset).gray == "luma":
        a, b, f = (load01(img) for img in images)
        return compute_metrics(a, b, f, resolve_metrics(metrics, preset, a.ndim), preset, slicewise)
    a, b, f = (load01_color(img) for img in images)
    ndim = images[0].spatial_dims
    return compute_metrics_image(a, b, f, resolve_metrics(metrics, preset, ndim), preset, slicewise)


def triplet_report(vals: dict[str, float], preset: str, as_json: bool = False) -> str:
    """One triplet's metrics as text lines (value, direction, convention) or JSON
    `{"preset", "values", "better", "conventions", "flags"}`. Flagged metrics (EN_unique: not comparable
    between float and 8-bit outputs) come last, marked with a dagger and explained ("flags" in JSON)."""
    vals = {k: vals[k] for k in headline_order(vals)}
    conv = metric_conventions(list(vals), preset)
    flags = {k: FLAGS[k] for k in vals if k in FLAGS}
    if as_json:
        better = {k: METRICS[k].direction for k in vals}
        return json.dumps({"preset": preset, "values": vals, "better": better, "conventions": conv, "flags": flags},
                          indent=2)
    width = max(len(flag_marked(k)) for k in vals)
    lines = [f"{flag_marked(k):<{width}}  {v:12.4f}  ({METRICS[k].direction} is better)  {conv[k]}"
             for k, v in vals.items()]
    return "\n".join([f"preset {preset}", *lines, *flag_notes(vals)])


def find_triplets(dir_a: str | Path | None, dir_b: str | Path | None, dir_f: str | Path,
                  pairs: Sequence[tuple[str, Path, Path]] | None = None) -> list[tuple[str, Path, Path, Path]]:
    """(name, a, b, f) for every source pair whose fused file is in dir_f: the A file's name or stem, the
    B file's name, or the pair id (`{id}.EXT`). `pairs` (id, A, B), e.g. from `neurofuse.layouts.find_pairs`,
    replaces pairing dir_a and dir_b by file name; the name is then the id."""
    dir_f = Path(dir_f)
    if not dir_f.is_dir():
        raise InputError(f"{dir_f}: not a folder")
    by_stem = {p.name.split(".")[0]: p for p in dir_f.iterdir() if p.is_file()}
    if pairs is None:
        pairs, where = [(name, pa, pb) for name, pa, pb in pair_files(dir_a, dir_b)], f"{dir_a} and {dir_b}"
    else:
        where = "the source pairs"
    out = []
    for name, pa, pb in pairs:
        pf = next((dir_f / n for n in (pa.name, pb.name) if (dir_f / n).is_file()), None)
        pf = pf or by_stem.get(pa.name.split(".")[0]) or by_stem.get(name.split(".")[0])
        if pf is not None:
            out.append((name, pa, pb, pf))
    if not out:
        raise InputError(f"{dir_f}: no fused file matches a pair of {where} by name")
    return out


@dataclass(frozen=True)
class MeanStd:
    """What every "mean ± std" table prints: `mean_std` of one column."""

    mean: float
    std: float
    n: int  # finite values, the ones mean and std are over
    inf: int = 0  # infinite values left out (e.g. PSNR of an output identical to a source)

    def cell(self, spec: str, std_spec: str | None = None) -> str:
        """`mean ± std` formatted by `spec` (the std by `std_spec` if given), with `(k inf)` when infinite
        values were left out."""
        text = f"{self.mean:{spec}} ± {self.std:{std_spec or spec}}"
        return text + (f" ({self.inf} inf)" if self.inf else "")


def mean_std(values: Iterable[float]) -> MeanStd:
    """Mean and sample standard deviation (ddof 1; 0 for a single value) of the finite values; NaN
    (undefined) and infinite values are left out, the infinite ones counted in `inf` so that a table can
    say so. No finite value: mean and std NaN. The one convention of evaluate, benchmark and classify."""
    vals = np.asarray([float(v) for v in values], dtype=np.float64)
    finite = vals[np.isfinite(vals)]
    n_inf = int(np.isinf(vals).sum())
    if not finite.size:
        return MeanStd(float("nan"), float("nan"), 0, n_inf)
    return MeanStd(float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else 0.0, int(finite.size),
                   n_inf)


def summarize(rows: Iterable[dict], metrics: Sequence[str] | None = None) -> list[dict]:
    """Per metric: `mean_std` of the rows' values (mean, sample std, n finite, inf left out) and direction."""
    rows = list(rows)
    if metrics is None:
        metrics = [k for k in rows[0] if k in METRICS] if rows else []
    table = []
    for m in metrics:
        s = mean_std(float(r[m]) for r in rows if m in r)
        better = METRICS[m].direction if m in METRICS else ""
        table.append({"metric": m, "mean": s.mean, "std": s.std, "n": s.n, "better": better, "inf": s.inf})
    return table


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Lines of a Markdown table: header, separator, one line per row (cells already formatted)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def summary_markdown(
    table: Sequence[dict], title: str | None = None, digits: int = 4, preset: str | None = None
) -> str:
    """A Markdown table `metric | mean +- std | n | better` (plus `convention` when `preset` is given).

    Flagged metrics (EN_unique: not comparable between float and 8-bit outputs) are marked with a dagger
    and explained under the table.
    """
    lines = [f"### {title}", ""] if title else []
    conv = metric_conventions([r["metric"] for r in table if r["metric"] in METRICS], preset) if preset else {}
    rows = []
    order = headline_order(r["metric"] for r in table)
    for r in sorted(table, key=lambda r: order.index(r["metric"])):
        name = flag_marked(r["metric"])
        small = 0 < abs(r["mean"]) < 10.0**-digits * 100  # e.g. Nabf ~1e-7: scientific, not 0.0000
        fmt = f".{digits - 1}e" if small else f".{digits}f"
        row = [name, MeanStd(r["mean"], r["std"], r["n"], r.get("inf", 0)).cell(fmt), r["n"], r["better"]]
        rows.append(row + ([conv.get(r["metric"], "").split("; FLAG")[0]] if preset else []))
    lines += markdown_table(["metric", "mean ± std", "n", "better"] + (["convention"] if preset else []), rows)
    lines += ["\n" + note for note in flag_notes(r["metric"] for r in table)]
    return "\n".join(lines) + "\n"


@dataclass
class Evaluation:
    """Per-image rows, the summary table and the files written."""

    rows: list[dict]
    summary: list[dict]
    files: list[Path]
    missing: list[str] = field(default_factory=list)  # source pairs without a fused file


def evaluate_dirs(
    dir_a: str | Path, dir_b: str | Path, dir_f: str | Path, metrics=None, preset: str = "standard",
    out_csv: str | Path | None = None, slicewise: str | None = None, progress: bool = True,
    pairs: Sequence[tuple[str, Path, Path]] | None = None,
) -> Evaluation:
    """Evaluate every fused file in dir_f against the same-named sources in dir_a and dir_b (or against
    `pairs`, see `find_triplets`); `Evaluation.missing` lists the pairs with no fused file.

    With out_csv, writes the per-image CSV there plus `<stem>_summary.csv` and `<stem>_summary.md`.
    """
    triplets = find_triplets(dir_a, dir_b, dir_f, pairs)
    rows, names = [], None
    for name, pa, pb, pf in tqdm(triplets, desc=f"evaluate ({preset})", disable=not progress, unit="img"):
        vals = evaluate_triplet(pa, pb, pf, metrics, preset, slicewise)
        names = names or headline_order(vals)
        rows.append({"name": name, **vals})
    table = summarize(rows, names)
    files: list[Path] = []
    if out_csv is not None:
        out_csv = Path(out_csv)
        stem = out_csv.with_suffix("")
        write_csv(out_csv, rows, ["name", *names])
        write_csv(f"{stem}_summary.csv", table, ["metric", "mean", "std", "n", "better"])
        title = f"{len(rows)} images, preset {preset}: {dir_f}"
        write_text(f"{stem}_summary.md", summary_markdown(table, title, preset=preset))
        files = [out_csv, Path(f"{stem}_summary.csv"), Path(f"{stem}_summary.md")]
    found = {t[0] for t in triplets}
    missing = [p[0] for p in pairs if p[0] not in found] if pairs is not None else []
    return Evaluation(rows, table, files, missing)
