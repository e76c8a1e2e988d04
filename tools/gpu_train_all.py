#!/usr/bin/env python3
"""Train every weight of issue 14 on one GPU within one call, then pack the results (issue 14 item 5).

ClinicalFMamba-2D and the six peers, for CT-MRI, SPECT-MRI and PET-MRI, at the paper's schedule: 200
epochs on whole 256x256 images (no crop schedule), cosine learning rate over those epochs, an EMA of the
weights (the configs' 0.999) validated, kept as best and shipped. Two-stage peers (MRSCFusion, DM-FNet,
LAGN) split the 200 epochs between their stages in the ratio of their configs and run stage 2 from stage
1's best weights, in the same slot. Each run's options come from its config (`configs/` and
`configs/peers/`: model, stage, learning rate, loss settings, initial weights) with the schedule
replaced, written to `<work>/configs/<run>.yaml`.

All chains run at once as separate `neurofuse train` processes on the one GPU (the chunked selective
scan is what `neurofuse.ssm` picks there). One global deadline (`--minutes`, counted from this script's
start) bounds everything: each process gets `--max-minutes` so that its training, its last validation
and its snapshot end before the packing reserve; a process still running then is stopped, and its last
per-epoch checkpoint is packed instead. Runs that stop before their 200 epochs are budget-stopped, not
finished; the manifest says how far each got, and `neurofuse train --config <its config>
--continue-from checkpoints/<run>` continues one anywhere.

Results: at most `--max-files` files under `--out` (default 8: tar.gz shards of at most `--shard-mib`
MiB each, `manifest.json`, and `scan_check.json` with `--check-scan`). Per run: the float16 best weights
(`best.safetensors`), the float16 snapshot (`weights.safetensors` + `progress.json`, continuable),
`log.csv`, `best.json`, `config.yaml` and the tail of its output. If everything does not fit, the
weights of final stages go first and what is left out is listed in the manifest.
`tools/gpu_unpack.py` checks the shards and unpacks them into `checkpoints/<run>/` (and ships with
`--ship`).

    # here (no GPU needed): copy the Harvard pairs into .gpu/ (git-ignored) and check what travels
    python tools/gpu_train_all.py --prepare       # after the call: --clean (no copy of the data stays)
    # on the GPU machine, one call (device tool: carry [".gpu"], timeout_s 600):
    PYTHONUNBUFFERED=1 python3 tools/gpu_train_all.py --data .gpu/data --out $OUT --check-scan
    # on a CPU, the whole path in about a minute of CPU time (2 pair sets x 2 methods, 1 step each, tiny split):
    python tools/gpu_train_all.py --smoke --data ../shared/data --out /tmp/gpu_smoke

The GPU machine's Python has PyTorch but not every neurofuse dependency: this script puts `src/` on the
path and, for packages that 2D training never calls (nibabel: NIfTI I/O; PyWavelets: the wavelet FMI
feature and the dwt baseline), stand-in modules that fail if used (`--stand-ins` forces them, for tests).
`--check-scan` compares the chunked scan with `selective_scan_ref` (outputs, last state, every gradient)
at the shapes ClinicalFMamba runs, times both, and writes `scan_check.json`.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SETS = {"ct-mri": "CT-MRI", "spect-mri": "SPECT-MRI", "pet-mri": "PET-MRI"}
METHODS = ("clinicalfmamba_2d", "ehdran_small", "swinfusion_small", "mambadfuse_small", "mrscfusion_small",
           "dmfnet_small", "lagn_small")
SMOKE_METHODS = ("clinicalfmamba_2d_tiny", "mrscfusion_small")  # one single-stage, one two-stage chain
STAND_INS = ("nibabel", "pywt")  # imported by neurofuse at module level, never called by 2D training
MIB = 1 << 20
TEXT_FILES = ("progress.json", "log.csv", "best.json", "config.yaml", "train.log")
LOG_TAIL = 32 * 1024  # bytes of each process's output that are packed
# The peers' processes run at a lower CPU priority: ClinicalFMamba's (launch-bound, the slowest) get the cores
# first when 21 processes share 16 of them. Set by --peer-nice.
NICE_PEERS = 5


def _log(msg: str) -> None:
    print(f"[gpu_train_all {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------- environment
def stand_in_dir(work: Path, force: bool = False) -> Path | None:
    """A folder of stand-in modules for the STAND_INS packages that are missing (all of them with `force`)."""
    names = [n for n in STAND_INS if force or importlib.util.find_spec(n) is None]
    if not names:
        return None
    root = work / "stand_ins"
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "__init__.py").write_text(
            f'"""Stand-in for {name}, not installed here (tools/gpu_train_all.py): 2D training never calls it."""\n\n\n'
            "def __getattr__(attr):\n"
            f"    raise AttributeError(f'{name}.{{attr}}: {name} is not installed on this machine "
            "(a tools/gpu_train_all.py stand-in)')\n", encoding="utf-8")
    return root


def setup_paths(work: Path, force_stand_ins: bool) -> dict[str, str]:
    """Make neurofuse importable here and in the child processes; returns the children's environment."""
    paths = []
    shim = stand_in_dir(work, force_stand_ins)
    if shim is not None:
        paths.append(str(shim))
    if force_stand_ins or importlib.util.find_spec("neurofuse") is None:
        paths.append(str(REPO / "src"))
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # One CPU thread per process: many processes share the machine's cores, the GPU does the work.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTORCH_CUDA_ALLOC_CONF=env.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"))
    return env


# ------------------------------------------------------------------------------------ planning
@dataclass
class Stage:
    run: str  # run name: <model>_<set>[_<stage>]_gpu
    model: str
    pair: str
    stage: str | None
    epochs: int
    share: float  # this stage's fraction of the chain's epochs
    config: dict[str, Any]
    config_path: Path | None = None
    # filled while running
    status: str = "pending"
    exit_code: int | None = None
    max_minutes: float | None = None
    launched_s: float | None = None
    ended_s: float | None = None
    retried: bool = False  # relaunched once at half the batch after running out of GPU memory


@dataclass
class Chain:
    name: str
    stages: list[Stage]
    next: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)
    log: Any = field(default=None, repr=False)


def _base_config(method: str, pair: str, stage: str | None) -> Path:
    """The shipped config a method's run starts from (a `_small` / `_tiny` / full-size variant shares it)."""
    suffix = f"_{stage}" if stage else ""
    family = method.removesuffix("_tiny").removesuffix("_small")
    candidates = [REPO / f"configs/peers/{method}_{pair}{suffix}.yaml",
                  REPO / f"configs/peers/{family}_small_{pair}{suffix}.yaml",
                  REPO / f"configs/{method}_{pair}.yaml", REPO / f"configs/{family}_{pair}.yaml",
                  REPO / f"configs/{family}_2d_{pair}.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    raise SystemExit(f"no config for {method} on {pair}{' stage ' + stage if stage else ''} "
                     f"(looked for {', '.join(str(c.relative_to(REPO)) for c in candidates)})")


@functools.lru_cache
def _stages_of(method: str) -> tuple[str | None, ...]:
    from neurofuse.models import create_model

    return tuple(getattr(create_model(method), "training_stages", None) or [None])


def _shipped_init(init: Any, method: str, mode: str) -> str | None:
    """A base config's `init` kept only when it names shipped weights of this very model (mode 'shipped')."""
    if mode != "shipped" or not isinstance(init, str) or init.endswith(".safetensors"):
        return None
    from neurofuse.models.pretrained import get_pretrained_cfg, split_name

    arch, tag = split_name(init)
    if arch != method or tag is None:
        return None
    try:
        get_pretrained_cfg(arch, tag)
    except Exception:
        return None
    return init


def plan(args: argparse.Namespace, work: Path) -> list[Chain]:
    """One chain per (method, pair set): its stages with their derived training options."""
    chains = []
    for pair in args.sets:
        for method in args.methods:
            stages = _stages_of(method)
            bases = [yaml.safe_load(_base_config(method, pair, s).read_text(encoding="utf-8")) for s in stages]
            base_epochs = [int(b.get("epochs", 1)) for b in bases]
            epochs = [args.epochs] if len(stages) == 1 else []
            if len(stages) > 1:  # the configs' split of the epochs, scaled to args.epochs
                done = 0
                for i, e in enumerate(base_epochs):
                    left = len(stages) - i - 1
                    n = args.epochs - done if left == 0 else max(1, round(args.epochs * e / sum(base_epochs)))
                    n = min(n, args.epochs - done - left)
                    epochs.append(n)
                    done += n
            chain_stages = []
            for i, (stage, base) in enumerate(zip(stages, bases, strict=True)):
                run = f"{method}_{pair}" + (f"_{stage}" if stage else "") + "_gpu"
                if i == 0:
                    init = _shipped_init(base.get("init"), method, args.init)
                else:
                    init = str(work / "runs" / chain_stages[0].run / "best.safetensors")
                cfg = dict(base)
                for key in ("max_minutes", "max_steps", "continue_from", "resume"):
                    cfg.pop(key, None)
                cfg.update(model=method, out=str(work / "runs" / run), epochs=epochs[i], crop=None,
                           crop_schedule=None, batch_size=args.batch, init=init, device="auto",
                           precision="auto", threads=None, num_workers=0, val_raw=False, val_limit=4,
                           val_every=args.val_every, final_val_all=False)
                cfg.setdefault("ema", 0.999)
                if stage is not None:
                    cfg["stage"] = stage
                if args.smoke:
                    cfg.update(max_steps=args.smoke_steps, val_metrics=False, val_limit=1, batch_size=2)
                chain_stages.append(Stage(run, method, pair, stage, epochs[i], epochs[i] / args.epochs, cfg))
            chains.append(Chain(f"{method}_{pair}", chain_stages))
    return chains


def write_configs(chains: list[Chain], work: Path, env: dict[str, str]) -> None:
    """Write each run's YAML and load it through TrainConfig (catches a bad option before any launch)."""
    from neurofuse.train import TrainConfig

    (work / "configs").mkdir(parents=True, exist_ok=True)
    (work / "runs").mkdir(parents=True, exist_ok=True)
    saved = os.environ.get("NEUROFUSE_DATA")
    os.environ["NEUROFUSE_DATA"] = env["NEUROFUSE_DATA"]
    try:
        for chain in chains:
            for st in chain.stages:
                st.config_path = work / "configs" / f"{st.run}.yaml"
                write_config(st)
                TrainConfig.from_yaml(st.config_path)
    finally:
        if saved is None:
            os.environ.pop("NEUROFUSE_DATA", None)
        else:
            os.environ["NEUROFUSE_DATA"] = saved


def write_config(st: Stage) -> None:
    header = (f"# {st.run}: derived by tools/gpu_train_all.py from "
              f"{_base_config(st.model, st.pair, st.stage).relative_to(REPO)} "
              f"({st.epochs} epochs on whole images, no crop schedule)\n")
    st.config_path.write_text(header + yaml.safe_dump(st.config, sort_keys=False), encoding="utf-8")


def smoke_data(source: Path, dest: Path, sets: list[str], n_train: int = 2, n_val: int = 1) -> Path:
    """A temporary split: the first `n_train` train and `n_val` val pairs of each set, linked into `dest`."""
    for pair in sets:
        src = source / "harvard" / SETS[pair]
        with open(src / "split.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        keep = [r for r in rows if r["split"] == "train"][:n_train] + [r for r in rows if r["split"] == "val"][:n_val]
        out = dest / "harvard" / SETS[pair]
        for folder in (p for p in src.iterdir() if p.is_dir()):
            (out / folder.name).mkdir(parents=True, exist_ok=True)
            for row in keep:
                for f in folder.glob(f"{row['id']}.*"):
                    target = out / folder.name / f.name
                    if not target.exists():
                        os.symlink(f.resolve(), target)
        with open(out / "split.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(keep)
    return dest


def planned_budget(chains: list[Chain], data: Path) -> list[dict[str, Any]]:
    """Per run: steps and training pixels of the whole planned schedule (whole images, one process)."""
    from PIL import Image

    rows = []
    for chain in chains:
        for st in chain.stages:
            root = data / "harvard" / SETS[st.pair]
            with open(root / "split.csv", newline="", encoding="utf-8") as fh:
                n_train = sum(r["split"] == "train" for r in csv.DictReader(fh))
            first = next(p for p in sorted((root / "MRI").iterdir()) if p.is_file())
            with Image.open(first) as im:
                side = im.size[0] * im.size[1]
            batch = int(st.config["batch_size"])
            steps = st.epochs * (n_train // batch)
            rows.append({"run": st.run, "model": st.model, "stage": st.stage, "epochs": st.epochs, "steps": steps,
                         "init": st.config.get("init"), "pixels": steps * batch * side})
    return rows


# ------------------------------------------------------------------------------------- running
@dataclass
class Clock:
    """The global deadline and the per-process time estimates (seconds; t = 0 at this script's start)."""

    start: float
    total: float  # --minutes * 60
    pack_reserve: float
    startup: float
    final: float
    grace: float

    def now(self) -> float:
        return time.monotonic() - self.start

    @property
    def kill_at(self) -> float:  # processes still running are stopped here; packing follows
        return self.total - self.pack_reserve

    @property
    def train_end(self) -> float:  # every process should have exited by here
        return self.kill_at - self.grace


def minutes_for(chain: Chain, clock: Clock) -> float:
    """--max-minutes for the chain's next stage: its share of what is left once every remaining stage's
    start-up and final validation + snapshot are set aside (a stage-1 run that ends early leaves more)."""
    left = chain.stages[chain.next:]
    avail = clock.train_end - clock.now() - len(left) * (clock.startup + clock.final)
    share = left[0].share / sum(s.share for s in left)
    return max(avail * share, 0.0) / 60.0


def launch(chain: Chain, clock: Clock, env: dict[str, str], work: Path, min_minutes: float) -> bool:
    st = chain.stages[chain.next]
    minutes = minutes_for(chain, clock)
    if min_minutes <= 0:  # smoke: max_steps ends the runs; never pass 0 (the CLI wants > 0)
        minutes = max(minutes, 0.5)
    elif minutes < min_minutes:
        st.status = "skipped: no time left"
        for later in chain.stages[chain.next + 1:]:
            later.status = "skipped: stage 1 skipped"
        chain.next = len(chain.stages)
        _log(f"{st.run}: skipped ({minutes:.2f} min left)")
        return False
    snap = work / "snapshots" / st.run
    snap.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "neurofuse", "train", "--config", str(st.config_path),
           "--max-minutes", f"{minutes:.3f}", "--snapshot-to", str(snap),
           "--export-fp16", str(snap / "best.safetensors")]
    chain.log = open(work / "logs" / f"{st.run}.log", "wb")  # noqa: SIM115 (closed when the process ends)
    nice = 0 if st.model.startswith("clinicalfmamba") else NICE_PEERS
    chain.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=chain.log, stderr=subprocess.STDOUT,
                                  preexec_fn=(lambda: os.nice(nice)) if nice and os.name == "posix" else None)
    st.status, st.max_minutes, st.launched_s = "running", round(minutes, 3), round(clock.now(), 1)
    _log(f"{st.run}: started, --max-minutes {minutes:.2f}")
    return True


def finish(chain: Chain, clock: Clock, code: int, work: Path | None = None) -> None:
    st = chain.stages[chain.next]
    st.exit_code, st.ended_s = code, round(clock.now(), 1)
    st.status = "exited" if code == 0 else f"failed (exit code {code})"
    chain.log.close()
    chain.proc, chain.log = None, None
    log = None if work is None else work / "logs" / f"{st.run}.log"
    if (code != 0 and log is not None and not st.retried and int(st.config["batch_size"]) > 1
            and "out of memory" in log.read_bytes()[-LOG_TAIL:].decode(errors="replace").lower()):
        # Out of GPU memory (many processes share one card): once more at half the batch, in what time is left.
        st.retried = True
        st.config["batch_size"] = int(st.config["batch_size"]) // 2
        log.rename(log.with_suffix(".oom.log"))
        shutil.rmtree(work / "runs" / st.run, ignore_errors=True)
        shutil.rmtree(work / "snapshots" / st.run, ignore_errors=True)
        write_config(st)
        _log(f"{st.run}: out of memory; again with batch {st.config['batch_size']}")
        return
    chain.next += 1
    if code != 0:
        for later in chain.stages[chain.next:]:
            later.status = "skipped: the previous stage failed"
        chain.next = len(chain.stages)
    _log(f"{st.run}: {st.status} at {st.ended_s:.0f} s")


def run_all(chains: list[Chain], clock: Clock, env: dict[str, str], work: Path, jobs: int,
            min_minutes: float, extra: list[subprocess.Popen]) -> None:
    """Start chains (all at once, or `jobs` at a time), move each to its next stage, stop all at kill_at."""
    (work / "logs").mkdir(parents=True, exist_ok=True)
    while True:
        running = [c for c in chains if c.proc is not None]
        for chain in running:
            code = chain.proc.poll()
            if code is not None:
                finish(chain, clock, code, work)
        for chain in chains:
            busy = sum(c.proc is not None for c in chains)
            if chain.proc is None and chain.next < len(chain.stages) and (jobs <= 0 or busy < jobs):
                launch(chain, clock, env, work, min_minutes)
        if all(c.proc is None and c.next >= len(c.stages) for c in chains):
            break
        if clock.now() >= clock.kill_at:
            _log("deadline: stopping the runs still going (their last checkpoints are packed)")
            for chain in chains:
                if chain.proc is not None:
                    chain.proc.terminate()
            t0 = time.monotonic()
            while any(c.proc is not None and c.proc.poll() is None for c in chains) and time.monotonic() - t0 < 5:
                time.sleep(0.2)
            for chain in chains:
                if chain.proc is not None:
                    if chain.proc.poll() is None:
                        chain.proc.kill()
                    finish(chain, clock, chain.proc.wait())  # no retry at the deadline
                    chain.stages[chain.next - 1].status = "stopped at the deadline"
                for later in chain.stages[chain.next:]:
                    later.status = "skipped: deadline"
                chain.next = len(chain.stages)
            break
        time.sleep(0.5)
    for proc in extra:  # helper processes (scan check, cache warm-up) must not outlive the deadline
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def collect(st: Stage, work: Path) -> dict[str, Any]:
    """Complete a run's snapshot folder from its run folder (also after a kill) and summarise the run."""
    from neurofuse.train import export_fp16, write_snapshot

    run, snap = work / "runs" / st.run, work / "snapshots" / st.run
    snap.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"run": st.run, "model": st.model, "pair": st.pair, "stage": st.stage,
                            "epochs_planned": st.epochs, "status": st.status, "exit_code": st.exit_code,
                            "max_minutes": st.max_minutes, "launched_s": st.launched_s, "ended_s": st.ended_s,
                            "batch_size": st.config["batch_size"], "retried_after_oom": st.retried}
    try:
        if (run / "progress.json").is_file() and not (snap / "progress.json").is_file():
            write_snapshot(run, snap)
        if (run / "best.safetensors").is_file() and not (snap / "best.safetensors").is_file():
            export_fp16(run / "best.safetensors", snap / "best.safetensors")
    except Exception as exc:  # a file cut short by the kill: pack what is there and say so
        info["collect_error"] = f"{type(exc).__name__}: {exc}"
    for name in ("config.yaml", "best.json"):
        if (run / name).is_file():
            shutil.copyfile(run / name, snap / name)
    log = work / "logs" / f"{st.run}.log"
    if log.is_file():
        data = log.read_bytes()[-LOG_TAIL:].replace(b"\r", b"\n")
        (snap / "train.log").write_bytes(b"\n".join(line for line in data.split(b"\n") if line.strip()) + b"\n")
    if (snap / "train.log").is_file():  # the trainer's last word: done | max_steps | max_minutes
        ends = [ln for ln in (snap / "train.log").read_text(encoding="utf-8", errors="replace").splitlines()
                if ln.split(":", 1)[0] in ("done", "max_steps", "max_minutes")]
        info["stopped"] = ends[-1].split(":", 1)[0] if ends else None
    if (snap / "progress.json").is_file():
        p = json.loads((snap / "progress.json").read_text(encoding="utf-8"))
        info.update({k: p.get(k) for k in ("step", "total_steps", "epoch", "images", "pixels", "pixels_full",
                                           "train_seconds", "machine")})
        info["finished_schedule"] = p.get("step") == p.get("total_steps")
        last = p.get("last_val") or {}
        info["last_val"] = {k: v for k, v in last.items() if k.startswith("val_") and "raw" not in k}
    info["files"] = sorted(f.name for f in snap.iterdir() if f.is_file())
    return info


# ------------------------------------------------------------------------------------- packing
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def pack_files(files: list[tuple[str, Path, int]], out: Path, *, shard_bytes: int, max_shards: int,
               total_bytes: int, prefix: str = "weights") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Pack (archive name, path, priority) into at most `max_shards` tar.gz files of at most `shard_bytes`
    each, `total_bytes` together; lower priorities are placed first. Returns (shards, left_out)."""
    margin = 64 * 1024
    entries = []
    for order, (name, path, prio) in enumerate(files):
        est = len(zlib.compress(path.read_bytes(), 6)) + 1536  # tar header + padding, gzip framing
        entries.append((prio, order, name, path, est))
    entries.sort()
    bins: list[list[tuple[str, Path, int]]] = []
    sizes: list[int] = []
    left_out, used = [], 0
    for prio, _, name, path, est in entries:
        why = None
        if used + est > total_bytes - margin:
            why = "over the total size limit"
        else:
            slot = next((i for i, s in enumerate(sizes) if s + est <= shard_bytes - margin), None)
            if slot is None and len(bins) < max_shards and est <= shard_bytes - margin:
                bins.append([])
                sizes.append(0)
                slot = len(bins) - 1
            if slot is None:
                why = "no room in any shard"
        if why is not None:
            left_out.append({"path": name, "bytes": path.stat().st_size, "priority": prio, "why": why})
            continue
        bins[slot].append((name, path, path.stat().st_size))
        sizes[slot] += est
        used += est
    shards = []
    for i, members in enumerate(bins, 1):
        target = out / f"{prefix}-{i:02d}.tar.gz"
        with tarfile.open(target, "w:gz", compresslevel=6) as tar:
            for name, path, _ in members:
                tar.add(path, arcname=name, recursive=False)
        size = target.stat().st_size
        if size > shard_bytes:  # the estimate was off: never hand back an oversized file
            raise RuntimeError(f"{target}: {size} bytes exceed the shard limit {shard_bytes}")
        shards.append({"file": target.name, "bytes": size, "sha256": _sha256(target),
                       "members": [{"path": n, "bytes": b, "sha256": _sha256(p)} for n, p, b in members]})
    return shards, left_out


def pack_runs(infos: list[dict[str, Any]], finals: set[str], work: Path, out: Path, args: argparse.Namespace,
              n_other: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    files = []
    for info in infos:
        snap = work / "snapshots" / info["run"]
        final = info["run"] in finals
        for name in info["files"]:
            if name in TEXT_FILES:
                prio = 0
            elif name == "best.safetensors":
                prio = 1 if final else 3
            else:  # weights.safetensors: the continuable snapshot
                prio = 2 if final else 4
            files.append((f"{info['run']}/{name}", snap / name, prio))
    max_shards = args.max_files - n_other
    total = int(args.max_total_mib * MIB) - n_other * 256 * 1024  # room for the manifest and scan check
    return pack_files(files, out, shard_bytes=int(args.shard_mib * MIB), max_shards=max_shards, total_bytes=total)


# ---------------------------------------------------------------------------------- scan check
def _scan_inputs(batch, d_inner, d_state, L, groups, delta_scale, dtype, device, seed=0, grid=None):
    import torch

    g = torch.Generator().manual_seed(seed)
    seq = (L,) if grid is None else tuple(grid)
    bc = (batch, d_state, *seq) if groups is None else (batch, groups, d_state, *seq)
    t = {"u": torch.randn(batch, d_inner, *seq, generator=g),
         "delta": torch.randn(batch, d_inner, *seq, generator=g) * delta_scale,
         "A": -torch.rand(d_inner, d_state, generator=g) - 0.2,
         "B": torch.randn(*bc, generator=g), "C": torch.randn(*bc, generator=g),
         "D": torch.randn(d_inner, generator=g), "z": torch.randn(batch, d_inner, *seq, generator=g),
         "delta_bias": torch.randn(d_inner, generator=g) * 0.5}
    low = {"u", "delta", "B", "C", "z"}  # what a bf16 autocast region hands the scan
    return {k: v.to(device=device, dtype=dtype if k in low else torch.float32) for k, v in t.items()}


def _scan_run(fn, inputs, transpose: bool, **kw):
    import torch

    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    args = dict(leaves)
    if transpose:  # a column-major scan of a grid: the transposed (non-contiguous) view
        for k in ("u", "delta", "B", "C", "z"):
            args[k] = leaves[k].transpose(-1, -2)
    y, h = fn(**args, delta_softplus=True, return_last_state=True, **kw)
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(y.shape, generator=g).to(y.device)
    gh = torch.randn(h.shape, generator=g).to(h.device)
    ((y.float() * gy).sum() + (h.float() * gh).sum()).backward()
    return {"y": y.detach(), "last_state": h.detach(), **{f"d{k}": v.grad for k, v in leaves.items()}}


SCAN_CASES_GPU = [
    # ClinicalFMamba-2D latent scans at 256x256 (64x64 grid, L 4096): 2 directions x d_inner 256 stacked
    dict(name="cfm_latent_L4096", batch=2, d_inner=512, d_state=8, L=4096, groups=2),
    dict(name="cfm_token_swap_L4096", batch=2, d_inner=256, d_state=16, L=4096, groups=None),
    dict(name="segments_L2500_grouped", batch=2, d_inner=64, d_state=4, L=2500, groups=2),
    dict(name="bf16_inputs_L1024", batch=2, d_inner=128, d_state=8, L=1024, groups=2, dtype="bfloat16"),
    dict(name="large_delta_L300", batch=1, d_inner=32, d_state=4, L=300, groups=None, delta_scale=20.0),
    dict(name="grid_64x64_transposed", batch=1, d_inner=32, d_state=4, L=4096, groups=2, grid=(64, 64),
         transpose=True),
]
SCAN_CASES_CPU = [  # run with the chunked SEGMENT shortened to 48 steps, so L 130 crosses segments
    dict(name="segments_L130_grouped", batch=1, d_inner=4, d_state=3, L=130, groups=2),
    dict(name="bf16_inputs_L64", batch=2, d_inner=4, d_state=3, L=64, groups=None, dtype="bfloat16"),
    dict(name="grid_8x8_transposed", batch=1, d_inner=4, d_state=2, L=64, groups=None, grid=(8, 8),
         transpose=True),
]


def check_scan(device: str, quick: bool) -> dict[str, Any]:
    """Chunked backend against the reference recurrence on `device`: outputs, last state, all gradients,
    forward and reverse; tolerance |x - ref| <= rtol * max|ref| + 1e-5 per tensor (rtol 2e-4 in float32,
    as tests/ssm; 2e-2 for bfloat16 inputs, whose outputs and input gradients are bfloat16)."""
    import torch

    from neurofuse.ssm import chunked, selective_scan, selective_scan_ref
    from neurofuse.ssm.scan import resolve_backend

    if quick:
        chunked.SEGMENT = 48
    dev = torch.device(device)
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                           "torch": torch.__version__, "auto_backend": resolve_backend("auto", dev),
                           "segment": chunked.SEGMENT, "cases": [],
                           "note": "run beside the training processes: its timings share the device with them"}
    for case in SCAN_CASES_CPU if quick else SCAN_CASES_GPU:
        dtype = getattr(torch, case.get("dtype", "float32"))
        rtol = 2e-2 if dtype == torch.bfloat16 else 2e-4
        inputs = _scan_inputs(case["batch"], case["d_inner"], case["d_state"], case["L"], case["groups"],
                              case.get("delta_scale", 0.5), dtype, dev, grid=case.get("grid"))
        for reverse in (False, True):
            t0 = time.perf_counter()
            got = _scan_run(selective_scan, inputs, case.get("transpose", False), backend="chunked", reverse=reverse)
            ref = _scan_run(selective_scan_ref if case.get("grid") is None else _ref_grid, inputs,
                            case.get("transpose", False), reverse=reverse)
            errors = {}
            for k, r in ref.items():
                err = (got[k].float() - r.float()).abs().max().item()
                tol = rtol * r.float().abs().max().item() + 1e-5
                errors[k] = {"max_err": err, "tol": tol, "ok": err <= tol}
            out["cases"].append({"case": case["name"], "reverse": reverse, "dtype": str(dtype).removeprefix("torch."),
                                 "ok": all(e["ok"] for e in errors.values()), "errors": errors,
                                 "seconds": round(time.perf_counter() - t0, 3)})
    out["ok"] = all(c["ok"] for c in out["cases"])
    if dev.type == "cuda" and not quick:
        out["timing_ms"] = _scan_timing(dev)
    return out


def _ref_grid(u, delta, A, B, C, D, z, delta_bias, **kw):
    """The reference on a grid view: flatten in the view's row-major order (a copy), scan, restore."""
    from neurofuse.ssm import selective_scan_ref

    shape = u.shape
    flat = [t.reshape(*t.shape[:-2], -1) for t in (u, delta, B, C, z)]
    y, h = selective_scan_ref(flat[0], flat[1], A, flat[2], flat[3], D, flat[4], delta_bias, **kw)
    return y.reshape(shape), h


def _scan_timing(dev) -> dict[str, float]:
    """Milliseconds per call at the shape of one ClinicalFMamba latent scan at batch 8 on whole images."""
    import torch

    from neurofuse.ssm import selective_scan, selective_scan_ref

    inputs = _scan_inputs(16, 512, 8, 4096, 2, 0.5, torch.float32, dev)

    def timed(fn, backward: bool, reps: int) -> float:
        for _ in range(1 if reps == 1 else 2):
            _one(fn, backward)
        torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        for _ in range(reps):
            _one(fn, backward)
        torch.cuda.synchronize(dev)
        return round(1000 * (time.perf_counter() - t0) / reps, 2)

    def _one(fn, backward: bool) -> None:
        leaves = {k: v.clone().requires_grad_(backward) for k, v in inputs.items()}
        y = fn(**leaves, delta_softplus=True)
        if backward:
            y.float().sum().backward()

    chunked = lambda **kw: selective_scan(**kw, backend="chunked")  # noqa: E731
    return {"shape": "batch 16, d_inner 512, d_state 8, L 4096, 2 groups",
            "chunked_forward": timed(chunked, False, 5), "chunked_forward_backward": timed(chunked, True, 5),
            "reference_forward": timed(selective_scan_ref, False, 1)}


# ---------------------------------------------------------------------------------------- main
def prepare(args: argparse.Namespace) -> None:
    """Copy the Harvard pairs into .gpu/data (git-ignored) and report what a device call carries."""
    src = Path(args.source).resolve() / "harvard"
    dest = REPO / ".gpu" / "data" / "harvard"
    for folder in SETS.values():
        if not (src / folder / "split.csv").is_file():
            raise SystemExit(f"{src / folder}: no split.csv (give --source, the folder holding harvard/)")
        if not (dest / folder).is_dir():
            shutil.copytree(src / folder, dest / folder)
    exclude = REPO / subprocess.run(["git", "rev-parse", "--git-path", "info/exclude"], cwd=REPO, check=True,
                                    capture_output=True, text=True).stdout.strip()
    exclude.parent.mkdir(parents=True, exist_ok=True)
    if "/.gpu/" not in (exclude.read_text(encoding="utf-8").split() if exclude.is_file() else []):
        with open(exclude, "a", encoding="utf-8") as fh:
            fh.write("/.gpu/\n")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                            capture_output=True).stdout.split(b"\0")
    tree = sum((REPO / f.decode()).stat().st_size for f in listed if f and (REPO / f.decode()).is_file())
    data = sum(p.stat().st_size for p in (REPO / ".gpu").rglob("*") if p.is_file())
    total = (tree + data) / MIB
    print(f"working tree {tree / MIB:.1f} MiB + .gpu {data / MIB:.1f} MiB = {total:.1f} MiB travel (limit 64)")
    if total > 63.5:
        raise SystemExit("too much would travel: the device call would be refused")
    print("device call: run(command='PYTHONUNBUFFERED=1 python3 tools/gpu_train_all.py --data .gpu/data "
          "--out $OUT --check-scan', carry=['.gpu'], timeout_s=600)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="Folder holding harvard/<SET>/ (default: $NEUROFUSE_DATA).")
    p.add_argument("--out", type=Path, help="Where the packed results go (on the GPU machine: $OUT).")
    p.add_argument("--work", type=Path, help="Run folders, configs, logs (default: a fresh folder in /tmp).")
    p.add_argument("--sets", nargs="+", choices=list(SETS), help="Pair sets (default: all three; smoke: two).")
    p.add_argument("--methods", nargs="+", help="Registered models (default: ClinicalFMamba-2D and the six peers).")
    p.add_argument("--epochs", type=int, default=200, help="Epochs per chain (split over two stages).")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--val-every", type=int, default=8, help="Validate (4 val images) every N epochs.")
    p.add_argument("--init", choices=["shipped", "scratch"], default="shipped",
                   help="Stage 1 starts from the shipped weights of the same model and set where they exist.")
    p.add_argument("--minutes", type=float, default=9.25, help="Global deadline, from this script's start.")
    p.add_argument("--startup-s", type=float, default=45.0, help="Set aside per process for its start-up.")
    p.add_argument("--final-s", type=float, default=25.0, help="Set aside per process for its last validation.")
    p.add_argument("--pack-s", type=float, default=30.0, help="Reserve for packing at the end.")
    p.add_argument("--grace-s", type=float, default=20.0, help="Wait past the planned end before stopping runs.")
    p.add_argument("--peer-nice", type=int, default=NICE_PEERS, help="CPU niceness of the peers' processes.")
    p.add_argument("--jobs", type=int, default=0, help="Processes at once (0: every chain at once).")
    p.add_argument("--max-files", type=int, default=8)
    p.add_argument("--shard-mib", type=float, default=16.0)
    p.add_argument("--max-total-mib", type=float, default=63.0)
    p.add_argument("--check-scan", action="store_true", help="Chunked scan vs reference; scan_check.json.")
    p.add_argument("--smoke", action="store_true", help="CPU test of the whole path: tiny split, 1 step.")
    p.add_argument("--smoke-steps", type=int, default=1)
    p.add_argument("--stand-ins", action="store_true", help="Use the stand-in modules even where installed.")
    p.add_argument("--dry-run", action="store_true", help="Write and check the configs, print the plan, stop.")
    p.add_argument("--prepare", action="store_true", help="Copy the data into .gpu/ for a device call.")
    p.add_argument("--clean", action="store_true", help="Remove .gpu/ (the copy of the data) after the call.")
    p.add_argument("--source", default=str(REPO / "../shared/data"), help="--prepare: folder holding harvard/.")
    p.add_argument("--scan-check-only", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.sets = args.sets or ["ct-mri", "spect-mri"]
        args.methods = args.methods or list(SMOKE_METHODS)
        if args.minutes == p.get_default("minutes"):
            args.minutes = 12.0  # a safety net only: max_steps ends the runs (slow on a loaded CPU)
    args.sets = args.sets or list(SETS)
    args.methods = args.methods or list(METHODS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    global NICE_PEERS
    NICE_PEERS = args.peer_nice
    if args.clean:
        shutil.rmtree(REPO / ".gpu", ignore_errors=True)
        return 0
    if args.prepare:
        prepare(args)
        return 0
    if args.scan_check_only is not None:  # the helper process of --check-scan
        setup_paths(args.scan_check_only.parent, args.stand_ins)
        result = check_scan(args.device, quick=args.device == "cpu")
        args.scan_check_only.write_text(json.dumps(result, indent=1), encoding="utf-8")
        return 0
    start = time.monotonic()
    if args.out is None:
        raise SystemExit("give --out (on the GPU machine: $OUT)")
    data = args.data or os.environ.get("NEUROFUSE_DATA")
    if not data:
        raise SystemExit("give --data or set NEUROFUSE_DATA (the folder holding harvard/)")
    data = Path(data).resolve()
    for pair in args.sets:
        if not (data / "harvard" / SETS[pair] / "split.csv").is_file():
            raise SystemExit(f"{data / 'harvard' / SETS[pair]}: no split.csv")
    import tempfile

    work = (args.work or Path(tempfile.mkdtemp(prefix="gpu_train_all_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.dry_run and any(args.out.iterdir()):
        raise SystemExit(f"{args.out}: not empty")
    env = setup_paths(work, args.stand_ins)
    if args.smoke:
        data = smoke_data(data, work / "data", args.sets)
        env["NEUROFUSE_SCAN_BACKEND"] = "chunked"  # the GPU's scan path, on the CPU
    env["NEUROFUSE_DATA"] = str(data)
    chains = plan(args, work)
    write_configs(chains, work, env)
    if args.dry_run:
        print("| run | epochs | steps | planned pixels | init |\n| --- | --- | --- | --- | --- |")
        for row in planned_budget(chains, data):
            init = row["init"] if row["init"] is None or "/" not in row["init"] else "stage 1's best"
            print(f"| {row['run']} | {row['epochs']} | {row['steps']} | {row['pixels'] / 1e6:.1f} M | {init} |")
        return 0
    clock = Clock(start, 60.0 * args.minutes, args.pack_s, args.startup_s, args.final_s, args.grace_s)
    _log(f"{sum(len(c.stages) for c in chains)} runs in {len(chains)} chains; work folder {work}; "
         f"deadline {args.minutes:.2f} min")
    n_other = 1  # manifest.json
    scan_proc, helpers = None, []
    if args.check_scan:
        n_other += 1
        device = "cpu" if args.smoke else args.device
        scan_proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--scan-check-only", str(work / "scan_check.json"),
             "--device", device] + (["--stand-ins"] if args.stand_ins else []),
            cwd=REPO, env=env, stdout=open(work / "scan_check.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    if not args.smoke:  # compile the validation metrics' numba kernels once, into the shared cache
        helpers.append(subprocess.Popen([sys.executable, "-c", _WARM_METRICS], cwd=REPO, env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    run_all(chains, clock, env, work, args.jobs, 0.0 if args.smoke else 0.25, helpers)
    if scan_proc is not None:  # the check may finish after the runs; it shares their deadline
        try:
            scan_proc.wait(timeout=max(clock.kill_at - clock.now(), 1.0))
        except subprocess.TimeoutExpired:
            scan_proc.kill()
            scan_proc.wait()
    t_pack = clock.now()
    infos = [collect(st, work) for c in chains for st in c.stages]
    finals = {c.stages[-1].run for c in chains}
    scan = None
    if args.check_scan:
        path = work / "scan_check.json"
        scan = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {
            "ok": False, "error": "no result (see the log tail)",
            "log_tail": (work / "scan_check.log").read_text(encoding="utf-8", errors="replace")[-4000:]}
        (args.out / "scan_check.json").write_text(json.dumps(scan, indent=1), encoding="utf-8")
    shards, left_out = pack_runs(infos, finals, work, args.out, args, n_other)
    manifest = {
        "what": "issue 14 weights trained by tools/gpu_train_all.py; unpack with tools/gpu_unpack.py",
        "smoke": args.smoke, "epochs": args.epochs, "batch": args.batch, "crop": "whole images",
        "sets": args.sets, "methods": args.methods, "init": args.init,
        "limits": {"max_files": args.max_files, "shard_bytes": int(args.shard_mib * MIB),
                   "max_total_bytes": int(args.max_total_mib * MIB)},
        "timing_s": {"deadline": clock.total, "runs_done": round(t_pack, 1), "packed": round(clock.now(), 1)},
        "runs": [{**info, "final": info["run"] in finals,
                  "ship": {"model": info["model"], "tag": info["pair"]} if info["run"] in finals else None}
                 for info in infos],
        "shards": shards, "left_out": left_out,
        "scan_check": None if scan is None else {"file": "scan_check.json", "ok": scan.get("ok")},
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    for info in infos:
        pix = info.get("pixels")
        _log(f"{info['run']}: {info['status']} ({info.get('stopped')}), step {info.get('step')}/"
             f"{info.get('total_steps')}, {(pix or 0) / 1e6:.1f} Mpx, {info.get('train_seconds')} s")
    _log(f"packed {len(shards)} shards ({sum(s['bytes'] for s in shards) / MIB:.1f} MiB), "
         f"{len(left_out)} files left out; done at {clock.now():.0f} s")
    failed = [i["run"] for i in infos if i["exit_code"] not in (0, None) and i["status"] != "stopped at the deadline"]
    return 1 if failed or (scan is not None and not scan.get("ok")) else 0


_WARM_METRICS = """
import numpy as np
from neurofuse.metrics import compute_metrics
x = np.random.default_rng(0).random((3, 64, 64))
compute_metrics(*x, preset="clinicalfmamba"); compute_metrics(*x, metrics=["Qabf"], preset="standard")
"""


if __name__ == "__main__":
    sys.exit(main())
