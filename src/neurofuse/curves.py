"""Learning curves: validation metrics of training runs against the training pixels (voxels) they saw.

Reads the `log.csv` every run writes (one row per validation; `neurofuse.train`), from a run folder or a
committed snapshot, and draws one panel per metric with a line per run, so one can see whether more
training still pays (3D: AG, the sharpness, with the sources' own AG as dashed lines). Rows validated on
the whole val split (a run's stops) are drawn as filled markers, rows on the periodic subset as a line;
both are kept in the CSV/Markdown table of each run's last row.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from neurofuse.errors import InputError
from neurofuse.io import atomic_write_path, write_csv, write_text

DEFAULT_METRICS = ("val_SSIM", "val_PSNR", "val_FMI", "val_Qabf")  # 2D runs
METRICS_3D = ("val_MS_SSIM", "val_PSNR", "val_EN", "val_AG")  # 3D runs validate these (no FMI, no Qabf)
_SOURCE_LEVELS = {"val_AG": ("val_AG_a", "val_AG_b")}  # drawn as dashed lines: the sources' own values


def metrics_in(logs: list[list[dict[str, float]]]) -> tuple[str, ...]:
    """The 2D curve metrics the logs hold, else the 3D ones."""
    present = {k for rows in logs for r in rows for k in r}
    return DEFAULT_METRICS if present & {"val_SSIM", "val_FMI", "val_Qabf"} else METRICS_3D


def read_log(run: str | Path) -> list[dict[str, float]]:
    """Rows of a run's `log.csv` (a run folder, a snapshot folder or the file) with numeric values."""
    path = Path(run)
    if path.is_dir():
        path = path / "log.csv"
    if not path.is_file():
        raise InputError(f"{path}: training log not found")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise InputError(f"{path}: training log has no rows")
    out = []
    for row in rows:
        parsed: dict[str, float] = {}
        for key, value in row.items():
            try:
                parsed[key] = float(value)
            except (TypeError, ValueError):
                continue
        out.append(parsed)
    return out


_COUNTERS = ("step", "images", "pixels", "pixels_full", "seconds")  # cumulative over a run's stages
Stages = str | Path | Sequence[str | Path]  # one run: its log, or the logs of its stages in order


def read_stages(stages: Stages) -> list[dict[str, float]]:
    """One run's log from its stages in order (a path, or several when a stage started from the previous
    one's weights): each later stage's step, images, pixels, pixels_full and seconds are counted on from
    the end of the stages before it, so its curve continues where theirs stopped."""
    paths = [stages] if isinstance(stages, (str, Path)) else list(stages)
    out: list[dict[str, float]] = []
    for path in paths:
        offset = {k: out[-1][k] for k in _COUNTERS if out and k in out[-1]}
        out += [{**r, **{k: r[k] + v for k, v in offset.items() if k in r}} for r in read_log(path)]
    return out


def _whole_split(row: dict[str, float], rows: list[dict[str, float]]) -> bool:
    """Whether a row was validated on more items than the run's periodic validations."""
    counts = [r.get("val_items", math.nan) for r in rows]
    return row.get("val_items", math.nan) > min(counts)


def plot_learning_curves(runs: dict[str, Stages], out: str | Path, metrics: tuple[str, ...] | None = None,
                         x: str = "pixels", title: str | None = None) -> Path:
    """PNG of `metrics` (default: `metrics_in` the logs) against `x` (pixels seen; `step` for logs without
    pixel counts) for each labelled run (its stages joined by `read_stages`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = {label: read_stages(path) for label, path in runs.items()}
    metrics = metrics or metrics_in(list(logs.values()))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for label, rows in logs.items():
            key = x if all(x in r for r in rows) else "step"
            periodic = [(r[key], r[metric]) for r in rows if metric in r and not _whole_split(r, rows)]
            whole = [(r[key], r[metric]) for r in rows if metric in r and _whole_split(r, rows)]
            line = None
            if periodic:
                (line,) = ax.plot(*zip(*periodic, strict=True), marker=".", label=f"{label} (val subset)")
            if whole:
                ax.plot(*zip(*whole, strict=True), "o", color=None if line is None else line.get_color(),
                        label=f"{label} (whole val split)")
        levels = {key: next((r[key] for rows in logs.values() for r in reversed(rows) if key in r), None)
                  for key in _SOURCE_LEVELS.get(metric, ())}
        for i, level in enumerate(levels.values()):
            if level is not None:
                ax.axhline(level, color="gray", ls="--" if i == 0 else ":", lw=1, label=f"source {'AB'[i]}")
        if any(v is not None for v in levels.values()):
            ax.legend(fontsize=7)
        ax.set_title(metric.removeprefix("val_"))
        ax.set_xlabel("training pixels seen" if x == "pixels" else x)
        ax.grid(alpha=0.3)
    # One legend for the runs, below the panels, so it never covers a curve (seven runs make 14 entries).
    handles, labels = axes[0][0].get_legend_handles_labels()
    runs_only = [(h, lab) for h, lab in zip(handles, labels, strict=True) if not lab.startswith("source ")]
    rows = (len(runs_only) + 7) // 8
    fig.legend(*zip(*runs_only, strict=True), loc="lower center", ncol=min(8, len(runs_only)), fontsize=7,
               frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 + 0.05 * rows, 1, 1))
    out = Path(out)
    with atomic_write_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out


def last_rows_table(runs: dict[str, Stages], out_csv: str | Path,
                    metrics: tuple[str, ...] | None = None) -> Path:
    """CSV + Markdown (same name, .md) of each run's last validation row: step, pixels, items, metrics."""
    from neurofuse.evaluate import markdown_table

    logs = {label: read_stages(path) for label, path in runs.items()}
    metrics = metrics or metrics_in(list(logs.values()))
    cols = ("step", "images", "pixels", "pixels_full", "val_items", *metrics)
    rows = []
    for label, log in logs.items():
        last = log[-1]
        rows.append({"run": label, **{c: last.get(c, math.nan) for c in cols}})
    out_csv = Path(out_csv)
    write_csv(out_csv, rows)
    header = ["run", *cols]
    body = [[r["run"], *(_fmt(r[c]) for c in cols)] for r in rows]
    write_text(out_csv.with_suffix(".md"), "\n".join(markdown_table(header, body)) + "\n")
    return out_csv


def _fmt(v: float) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "-"
    if float(v).is_integer() and abs(v) >= 100:
        return f"{int(v):,}"
    return f"{v:.4f}"
