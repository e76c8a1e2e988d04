"""3D fusion table, T2 + FLAIR: every classical method and any learned weights, both metric presets, wall time
and peak memory of each fusion, and a grid of slices with a zoomed crop.

The held-out volumes of a training run, exactly as its trainer validated them (the config's data folder,
`val_ids` and volume_size / volume_fit / volume_clip, built by `neurofuse.train.build_datasets`):

    python benchmarks/brats3d.py --config configs/clinicalfmamba_3d_brats.yaml --out docs/results/brats3d \\
        --learned "ClinicalFMamba-3D=clinicalfmamba_3d:checkpoints/clinicalfmamba_3d_brats/weights.safetensors" \\
        --learned "CFM-3D single scan=clinicalfmamba_3d:checkpoints/clinicalfmamba_3d_brats_single/weights.safetensors"

Every case of a folder (BraTS 2012/2019/2021/2023 layouts), cropped to its brain box and resampled to a
`--size`^3 grid (`neurofuse.brats.preprocess_case`):

    python benchmarks/brats3d.py --data ../shared/data --size 128 --out /tmp/brats3d
    python benchmarks/brats3d.py --data ROOT --method clinicalfmamba -O weights=runs/x/best.safetensors

`--learned LABEL=NAME:WEIGHTS` adds a row LABEL: NAME is a learned fusion method (`clinicalfmamba`) or a
registered model (`clinicalfmamba_3d`, `clinicalfmamba_3d_tiny`), run through `neurofuse.fusion.fuse` as a
learned method with `weights=WEIGHTS`; the architecture options it was trained with (`model_args`, e.g.
`scan: single`) come from the file's metadata. `-O KEY=VALUE` options go to every learned row (e.g.
`-O crop=false`: the whole volume in one pass, the trainer's validation forward; `-O device=cuda`).
`--variant LABEL=METHOD:KEY=VALUE[,KEY=VALUE]` adds a row of a method with options (`laplacian:levels=1`).

Metrics (presets `clinicalfmamba` and `standard`): PSNR, MS_SSIM, EN, AG and EN_unique (flagged) on the
whole volume (AG, the 3D average gradient, measures sharpness; summary.md gives the sources' AG beside it);
SSIM_axial and Qabf_axial, the 2D SSIM and Qabf averaged over the axial slices that hold brain
(`compute_metrics(..., slicewise="axial", per_slice=("SSIM",))`). Each fusion runs alone in a fresh process
(multiprocessing 'spawn'), which reports the fusion's wall time and peak resident memory (VmHWM).
Writes per_case.csv, summary.csv, summary.md (mean ± std over volumes, `neurofuse.evaluate.mean_std`) and
grid.png (per volume: central axial, coronal and sagittal slices and a 2x zoom of the axial one).
"""

# Only light imports at module level: every fusion runs in a spawned process that imports this file, and
# its memory should be the fusion's, not the metric and plotting libraries'.
from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neurofuse.errors import UsageError

VOLUME_METRICS = ("PSNR", "MS_SSIM", "EN", "AG", "EN_unique")  # on the whole volume
SLICE_METRICS = ("SSIM", "Qabf")  # 2D, mean over the axial slices holding brain
PRESETS = ("clinicalfmamba", "standard")
# Measured in the fusion's own process: (column, Markdown header, format)
MEASURES = (
    ("seconds", "s/volume", ".3g"),
    ("load_seconds", "model load s", ".3g"),
    ("peak_rss_mb", "peak RSS MiB", ".4g"),
    ("fusion_rss_mb", "RSS rise in fusion MiB", ".4g"),
    ("cuda_peak_mb", "CUDA peak MiB", ".4g"),
)
_MAXRSS_PER_MIB = 1024.0 if sys.platform != "darwin" else 1024.0**2  # ru_maxrss: KiB on Linux, bytes on macOS


def metric_column(name: str) -> str:
    """The table column of metric `name`: slice metrics carry `_axial`."""
    return f"{name}_axial" if name in SLICE_METRICS else name


def metric_columns() -> list[str]:
    """Metric columns in table order; the flagged EN_unique last (`headline_order`)."""
    from neurofuse.metrics.presets import headline_order

    return [metric_column(m) for m in headline_order([*VOLUME_METRICS[:3], *SLICE_METRICS, *VOLUME_METRICS[3:]])]


def volume_metrics(a: np.ndarray, b: np.ndarray, f: np.ndarray, preset: str) -> dict[str, float]:
    """The table's metrics of one fused volume in `preset`, by column name."""
    from neurofuse.metrics import compute_metrics

    vals = compute_metrics(a, b, f, [*VOLUME_METRICS, *SLICE_METRICS], preset, slicewise="axial",
                           per_slice=SLICE_METRICS)
    return {metric_column(k): v for k, v in vals.items()}


def resolve_method(name: str, ndim: int = 3, register: bool = False) -> str:
    """The fusion method that runs `name`: a registered method, the learned method running model `name`
    on `ndim`-D input, or (`register`, only in the fusion's own process) model `name` registered as a
    learned method of that name. UsageError for anything else."""
    from neurofuse.fusion import list_methods

    methods = {m.name: m for m in list_methods()}
    if name in methods:
        return name
    for m in methods.values():
        if m.models.get(ndim) == name:
            return m.name
    from neurofuse.models.registry import list_models

    if name not in list_models():
        raise UsageError(f"{name}: neither a fusion method ({', '.join(methods)}) nor a registered model")
    if register:
        from neurofuse.learned import register_learned_method

        register_learned_method(name, {ndim: name}, f"model {name} (benchmarks/brats3d.py)")
    return name


def _proc_kib(field: str) -> int | None:
    """`field` (VmRSS, VmHWM) of /proc/self/status in KiB; None where there is no such file (not Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Set this process's VmHWM back to its current RSS (Linux /proc/self/clear_refs, value 5)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _fuse_child(folder: str, method: str, options: dict) -> dict:
    """In a fresh process: fuse `folder`/a.npy and b.npy with `method`, write f.npy; the fusion's wall
    time, the model's load time, the process's peak RSS and the fusion's own peak above what it held before.

    Memory comes from /proc/self/status (VmHWM, the peak RSS of this process's memory since it started;
    the hiwater reset just before the fusion, so the fusion's peak is measured by itself). Not
    `getrusage` ru_maxrss: after fork + exec it starts at the parent's RSS, so a spawned child of a large
    parent reports the parent's size. Where /proc is missing, ru_maxrss is reported instead (`rss_from`).
    """
    from neurofuse.fusion import fuse, get_method

    a, b = np.load(Path(folder) / "a.npy"), np.load(Path(folder) / "b.npy")
    m = get_method(resolve_method(method, a.ndim, register=True))
    load = 0.0
    if m.kind == "learned":  # build the model and read its weights first (the cache `fuse` then uses)
        from neurofuse.inference import load_model

        t0 = time.perf_counter()
        load_model(m.models[a.ndim], options.get("weights"), options.get("pretrained"))
        load = time.perf_counter() - t0
    setup_peak, rss_before = _proc_kib("VmHWM"), _proc_kib("VmRSS")
    proc = setup_peak is not None and rss_before is not None and _reset_peak_rss()
    max_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    f = fuse(a, b, m.name, **options)
    seconds = time.perf_counter() - t0
    if proc:
        fusion_peak = _proc_kib("VmHWM") or 0
        peak, rise = max(setup_peak, fusion_peak) / 1024.0, (fusion_peak - rss_before) / 1024.0
    else:
        max_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak, rise = max_after / _MAXRSS_PER_MIB, (max_after - max_before) / _MAXRSS_PER_MIB
    torch = sys.modules.get("torch")
    cuda = torch is not None and torch.cuda.is_initialized()
    np.save(Path(folder) / "f.npy", f)
    return {
        "seconds": seconds,
        "load_seconds": load,
        "peak_rss_mb": peak,
        "fusion_rss_mb": rise,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan"),
        "threads": torch.get_num_threads() if torch is not None else "",
        "gpu": torch.cuda.get_device_name() if cuda else "",
        "rss_from": "proc" if proc else "getrusage",
    }


def fuse_isolated(a: np.ndarray, b: np.ndarray, method: str, options: dict) -> tuple[np.ndarray, dict]:
    """(fused volume, `_fuse_child`'s measures) of one fusion run alone in a spawned process (inputs and
    output pass through .npy files, so no pickled copy inflates its memory)."""
    with tempfile.TemporaryDirectory(prefix="brats3d-") as tmp:
        np.save(Path(tmp) / "a.npy", a)
        np.save(Path(tmp) / "b.npy", b)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            stats = pool.apply(_fuse_child, (tmp, method, options))
        return np.load(Path(tmp) / "f.npy"), stats


def _central_slices(vol: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal and sagittal central slices of a (x, y, z) volume, rotated for display."""
    cx, cy, cz = (n // 2 for n in vol.shape)
    return [np.rot90(vol[:, :, cz]), np.rot90(vol[:, cy, :]), np.rot90(vol[cx, :, :])]


def zoom_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, slice]:
    """Half-side square of the displayed central axial slice, centred on the brain's centre there."""
    sl = _central_slices(a)[0]
    mask = (sl > 0) | (_central_slices(b)[0] > 0)
    centre = np.argwhere(mask).mean(axis=0) if mask.any() else np.asarray(sl.shape) / 2
    box = []
    for c, n in zip(centre, sl.shape, strict=True):
        side = max(n // 2, 1)
        start = int(np.clip(round(c - side / 2), 0, n - side))
        box.append(slice(start, start + side))
    return box[0], box[1]


def grid_cells(vol: np.ndarray, box: tuple[slice, slice]) -> list[np.ndarray]:
    """The grid's cells of one volume: central axial, coronal, sagittal slices and the axial `box` at 2x
    (nearest neighbour, so voxels stay visible)."""
    slices = _central_slices(vol)
    return [*slices, np.kron(slices[0][box], np.ones((2, 2), dtype=np.float32))]


def _pad_cells(columns: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Zero-pad every cell to the largest cell's shape (write_grid wants one size)."""
    h = max(c.shape[0] for col in columns for c in col)
    w = max(c.shape[1] for col in columns for c in col)
    return [[np.pad(c, ((0, h - c.shape[0]), (0, w - c.shape[1]))) for c in col] for col in columns]


@dataclass
class Volumes:
    """The volumes a table is on: id -> (T2, FLAIR) in [0, 1], and how they were made (one line)."""

    pairs: dict[str, tuple[np.ndarray, np.ndarray]]
    description: str


def config_volumes(config: Path, data: Path | None) -> Volumes:
    """The held-out volumes of training config `config` as its trainer validates them (`build_datasets`;
    its data folder, `${NEUROFUSE_DATA}` expanded, unless `data` is given)."""
    from neurofuse.train import TrainConfig, build_datasets

    cfg = TrainConfig.from_yaml(config, data=None if data is None else str(data))
    train, val, dims = build_datasets(cfg)
    del train
    if dims != 3:
        raise UsageError(f"{config}: not a 3D (volumes) config")
    pairs = {val[i]["id"]: (val[i]["a"][0].numpy(), val[i]["b"][0].numpy()) for i in range(len(val))}
    p = val.prep
    fit = "centre crop/pad at native spacing" if p.mode == "crop" else "resampled (aspect kept) and zero-padded"
    how = (f"the {len(pairs)} held-out volume(s) of `{config}` (val_ids) under {cfg.data}, as its trainer validated "
           f"them (`neurofuse.train.build_datasets`): brain box + {p.margin} voxels, {fit} to {p.size}^3, brain "
           f"percentiles {p.clip_percentiles} -> [0, 1]")
    return Volumes(pairs, how)


def folder_volumes(data: Path, size: int) -> Volumes:
    """Every case under `data`, cropped to its brain box and resampled to `size`^3 (`preprocess_case`)."""
    from neurofuse.brats import PreprocessConfig, discover, preprocess_case

    cfg = PreprocessConfig(size=size)
    pairs = {}
    for case in discover(data, require=("t2", "flair")):
        v = preprocess_case(case, cfg)
        pairs[case.id] = (v["t2"], v["flair"])
    how = (f"every case under {data}: brain box + {cfg.margin} voxels resampled (aspect kept) to {size}^3, brain "
           f"percentiles {cfg.clip_percentiles} -> [0, 1] (`neurofuse.brats.preprocess_case`)")
    return Volumes(pairs, how)


def _weights_note(path: str) -> str:
    """What a weights file's metadata says (model, model_args, step, ema), for the table's notes."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            meta = dict(fh.metadata() or {})
    except Exception:  # a missing or foreign file fails later, in the fusion, with its own message
        return "no readable metadata"
    keys = ("model", "model_args", "step", "ema", "dtype")
    return ", ".join(f"{k} {meta[k]}" for k in keys if k in meta) or "no metadata"


@dataclass
class Entry:
    """One row of the table: its label, the method (or model) that runs and its options."""

    label: str
    method: str
    options: dict = field(default_factory=dict)


def parse_entries(args: argparse.Namespace, ap: argparse.ArgumentParser) -> list[Entry]:
    """The rows: `--method` (default every classical method), each `--variant LABEL=METHOD:KEY=VALUE,...`
    (a method with options), then each `--learned LABEL=NAME:WEIGHTS`."""
    from neurofuse.cli.fuse import method_options
    from neurofuse.fusion import get_method, list_methods

    opts = method_options(tuple(args.option))
    names = args.method or [m.name for m in list_methods("classical")]
    entries = [Entry(m, m, opts if get_method(m).kind == "learned" else {}) for m in names]
    for spec in args.variant:
        label, sep, rest = spec.partition("=")
        name, _, items = rest.partition(":")
        if not (sep and label and name):
            ap.error(f"--variant {spec!r}: expected LABEL=METHOD:KEY=VALUE[,KEY=VALUE]")
        if name not in {m.name for m in list_methods()}:
            ap.error(f"--variant {spec!r}: {name} is not a fusion method")
        try:
            entries.append(Entry(label, name, method_options(tuple(filter(None, items.split(","))))))
        except UsageError as exc:
            ap.error(f"--variant {spec!r}: {exc}")
    for spec in args.learned:
        label, sep, rest = spec.partition("=")
        name, sep2, weights = rest.partition(":")
        if not (sep and sep2 and label and name and weights):
            ap.error(f"--learned {spec!r}: expected LABEL=NAME:WEIGHTS")
        resolve_method(name)
        entries.append(Entry(label, name, {**opts, "weights": weights}))
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        ap.error(f"two rows share a label: {labels}")
    return entries


@dataclass
class Result:
    """A run's rows (one per method, volume and preset), the volumes, the files written and (with
    `keep_fused`) the fused volumes by (label, volume id)."""

    rows: list[dict]
    volumes: Volumes
    files: list[Path] = field(default_factory=list)
    fused: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    markdown: str = ""


def _cell(values, spec: str) -> str:
    from neurofuse.evaluate import mean_std

    s = mean_std(float(v) for v in values)
    return "—" if s.n == 0 and not s.inf else s.cell(spec, ".3g")


def summary_rows(rows: list[dict], entries: list[Entry]) -> list[dict]:
    """Per method and preset: n volumes and mean, std (`mean_std`) of every metric and measure."""
    from neurofuse.evaluate import mean_std

    out = []
    for e in entries:
        for preset in PRESETS:
            sel = [r for r in rows if r["method"] == e.label and r["preset"] == preset]
            row = {"method": e.label, "preset": preset, "n": len(sel)}
            for col in [*metric_columns(), *(m[0] for m in MEASURES)]:
                s = mean_std(float(r[col]) for r in sel)
                row[f"{col}_mean"], row[f"{col}_std"] = s.mean, s.std
            out.append(row)
    return out


def source_sharpness(volumes: Volumes, preset: str) -> dict[str, list[float]]:
    """AG (the sharpness column) of each source volume in `preset`: {"T2": [...], "FLAIR": [...]} per volume."""
    from neurofuse.metrics import compute_metrics

    out: dict[str, list[float]] = {"T2": [], "FLAIR": []}
    for a, b in volumes.pairs.values():
        for name, src in (("T2", a), ("FLAIR", b)):
            out[name].append(compute_metrics(a, b, src, ["AG"], preset)["AG"])
    return out


def summary_markdown(rows: list[dict], entries: list[Entry], volumes: Volumes, title: str) -> str:
    """summary.md: machine and threads, the volumes, a mean ± std table per preset with the sources' AG,
    time and memory, per-volume tables and what every column means."""
    from neurofuse.evaluate import markdown_table
    from neurofuse.metrics.presets import flag_marked, flag_notes
    from neurofuse.precision import cpu_info

    cols = metric_columns()
    measures = [m for m in MEASURES if any(np.isfinite(float(r[m[0]])) for r in rows)]
    threads = sorted({str(r["threads"]) for r in rows if r["threads"] != ""})
    gpus = sorted({r["gpu"] for r in rows if r["gpu"]})
    machine = f"{cpu_info()[0] or 'unknown CPU'}, {os.cpu_count()} CPUs" + "".join(f"; GPU {g}" for g in gpus)
    lines = [
        f"# {title}",
        "",
        f"Volumes: {volumes.description}: {', '.join(volumes.pairs)}.",
        "",
        f"Machine: {machine}. Torch threads in the learned fusions: {', '.join(threads) or 'none run'} "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', 'unset')}).",
        "",
    ]
    for e in entries:
        if "weights" in e.options:
            w = e.options["weights"]
            lines.append(f"- {e.label}: `{e.method}` with `{w}` ({_weights_note(w)})"
                         + "".join(f", -O {k}={v}" for k, v in e.options.items() if k != "weights"))
    lines += [""] if any("weights" in e.options for e in entries) else []
    for preset in PRESETS:
        table = [[e.label, *(_cell((r[c] for r in rows if r["method"] == e.label and r["preset"] == preset), ".4g")
                             for c in cols)] for e in entries]
        lines += [f"## Preset `{preset}` (mean ± std over {len(volumes.pairs)} volumes)", ""]
        lines += markdown_table(["method", *map(flag_marked, cols)], table) + [""]
        sharp = source_sharpness(volumes, preset)
        lines += ["AG of the sources (a fusion as sharp as its sources reaches theirs): "
                  + ", ".join(f"{k} {_cell(v, '.4g')}" for k, v in sharp.items()) + ".", ""]
    one = [r for r in rows if r["preset"] == PRESETS[0]]  # the measures, once per fusion
    table = [[e.label, *(_cell((r[m] for r in one if r["method"] == e.label), spec) for m, _, spec in measures)]
             for e in entries]
    lines += [f"## Time and peak memory per volume (mean ± std over {len(volumes.pairs)} volumes)", ""]
    lines += markdown_table(["method", *(h for _, h, _ in measures)], table) + [""]
    for preset in PRESETS:
        per = [[r["method"], r["case"], *(f"{r[c]:.4g}" for c in cols), *(f"{r[m]:{spec}}" for m, _, spec in measures)]
               for r in rows if r["preset"] == preset]
        lines += [f"## Per volume, preset `{preset}`", ""]
        lines += markdown_table(["method", "volume", *map(flag_marked, cols), *(h for _, h, _ in measures)], per)
        lines += [""]
    lines += [
        "Columns: PSNR, MS_SSIM, EN, AG (average gradient, the sharpness) and EN_unique on the whole volume, as "
        "`compute_metrics` computes them in the preset; SSIM_axial and Qabf_axial: the 2D SSIM and Qabf averaged "
        "over the axial slices (third voxel axis) that hold brain in T2 or FLAIR (`slicewise='axial'`, "
        "`per_slice=('SSIM',)`). Every fusion ran alone in a "
        "fresh process (multiprocessing spawn). s/volume: wall time (time.perf_counter) of the `fuse` call; for a "
        "learned method the model was built and its weights read before it (model load s). Peak RSS: the peak "
        "resident memory of that process since it started (VmHWM, /proc/self/status): interpreter, numpy, "
        "neurofuse (and torch and the model for a learned method), both inputs and the fusion. RSS rise in "
        "fusion: the peak during the `fuse` call (VmHWM reset just before it) minus the RSS just before it, the "
        "fusion's own working memory. (getrusage's ru_maxrss is not used: after fork + exec it starts at the "
        "parent's RSS.) CUDA peak: torch.cuda.max_memory_allocated, where a "
        "fusion ran on a GPU. Mean ± std: `neurofuse.evaluate.mean_std` (sample std).",
        "",
        *(["Memory here from getrusage ru_maxrss (no /proc/self/status): it includes the parent's RSS at spawn.",
           ""] if any(r["rss_from"] != "proc" for r in rows) else []),
        *flag_notes(cols),
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=None,
                    help="a 3D training config: its held-out volumes (val_ids), preprocessed as the trainer does")
    ap.add_argument("--data", type=Path, default=None,
                    help="data folder (without --config: every case in it; with --config: replaces its data)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--size", type=int, default=None, help="grid edge without --config (default 128)")
    ap.add_argument("--method", action="append", default=None, help="methods (default: every classical one)")
    ap.add_argument("-O", "--option", action="append", default=[], help="KEY=VALUE for the learned rows")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=METHOD:KEY=VALUE[,KEY=VALUE]",
                    help="a row LABEL: a method with these options, e.g. 'Laplacian 1 level=laplacian:levels=1'")
    ap.add_argument("--learned", action="append", default=[], metavar="LABEL=NAME:WEIGHTS",
                    help="a row LABEL: learned method or registered model NAME with these weights (repeatable)")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS and NUMBA_NUM_THREADS of the fusion processes (default: as set, or the "
                         "libraries' own)")
    return ap


def main(argv: list[str] | None = None, keep_fused: bool = False) -> Result:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.config is None and args.data is None:
        ap.error("give --config (held-out volumes of a training config) or --data (every case of a folder)")
    if args.config is not None and args.size is not None:
        ap.error("--size: with --config the grid is the config's volume_size")
    if args.threads is not None:  # the spawned fusion processes inherit them
        for var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    try:
        entries = parse_entries(args, ap)
    except UsageError as exc:
        ap.error(str(exc))
    if args.config is not None:
        volumes = config_volumes(args.config, args.data)
    else:
        volumes = folder_volumes(args.data, args.size or 128)
    shape = next(iter(volumes.pairs.values()))[0].shape
    boxes = {cid: zoom_box(a, b) for cid, (a, b) in volumes.pairs.items()}
    views = {"T2": [], "FLAIR": []}
    for cid, (a, b) in volumes.pairs.items():
        views["T2"] += grid_cells(a, boxes[cid])
        views["FLAIR"] += grid_cells(b, boxes[cid])
    rows, fused = [], {}
    for e in entries:
        views[e.label] = []
        for cid, (a, b) in volumes.pairs.items():
            f, stats = fuse_isolated(a, b, e.method, e.options)
            print(f"{e.label} {cid}: {stats['seconds']:.2f} s, peak RSS {stats['peak_rss_mb']:.0f} MiB", flush=True)
            views[e.label] += grid_cells(f, boxes[cid])
            if keep_fused:
                fused[(e.label, cid)] = f
            for preset in PRESETS:
                rows.append({"method": e.label, "case": cid, "preset": preset, **volume_metrics(a, b, f, preset),
                             **stats})
    title = f"3D fusion, T2 + FLAIR at {'x'.join(map(str, shape))}: {len(volumes.pairs)} volume(s)"
    text = summary_markdown(rows, entries, volumes, title)
    print(text)
    result = Result(rows, volumes, fused=fused, markdown=text)
    if args.out is not None:
        from neurofuse.benchmark import write_grid
        from neurofuse.io import write_csv, write_text

        args.out.mkdir(parents=True, exist_ok=True)
        columns = ["method", "case", "preset", *metric_columns(), *(m[0] for m in MEASURES), "threads", "gpu",
                   "rss_from"]
        labels = [f"{cid}\n{view}" for cid in volumes.pairs for view in ("axial", "coronal", "sagittal", "axial 2x")]
        result.files = [
            write_csv(args.out / "per_case.csv", rows, columns),
            write_csv(args.out / "summary.csv", summary_rows(rows, entries)),
            write_text(args.out / "summary.md", text),
            args.out / "grid.png",
        ]
        write_grid(args.out / "grid.png", list(views), _pad_cells(list(views.values())), row_labels=labels)
    return result


if __name__ == "__main__":
    main()
