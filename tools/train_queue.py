#!/usr/bin/env python3
"""Run training configs one after another on this machine, each continued from wherever it got to.

Long CPU budgets (issue 14: every peer on ClinicalFMamba's pixel budget for three pair sets) span
sessions and machines. This runs a list of configs in order within one deadline and leaves a committable
snapshot (`checkpoints/<run>`: float16 weights, progress.json, log.csv) for each, so the next session
calls the same command and carries on.

    python tools/train_queue.py --minutes 150 --threads 2 --peers spect-mri --peers ct-mri
    python tools/train_queue.py --minutes 60 configs/clinicalfmamba_2d_ct-mri.yaml     # any configs, in order
    python tools/train_queue.py --dry-run --peers pet-mri       # say what would run, run nothing

Per config (`run` = the config's file stem, the snapshot `checkpoints/<run>`):
- the snapshot is at its schedule's last step: done, skipped;
- the config's run folder (`out`) holds `last_state.pt` at least as far as the snapshot: `--resume`;
- a snapshot exists: `--continue-from` it (a new machine: weights and schedule position; the
  optimiser restarts);
- otherwise a fresh start.
A stage-2 config whose `init` is a stage-1 run folder's `best.safetensors` that this machine does not
have starts from the stage-1 snapshot's weights (its final EMA) instead. A stage 2 waits for its stage 1
to be done; so does a config whose `init` is another run's snapshot (`checkpoints/<run>/weights.safetensors`,
e.g. an SSIM stage after a long run). Every run gets `--max-minutes` = what is left before the deadline
less `--reserve` (its last whole-val validation and the snapshot), and `--snapshot-to` its snapshot.
The queue stops when fewer than `--min-minutes` are left, or at the first run that fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# A pair set's six peers in the order they run: single-stage first, two-stage chains stage 1 then 2.
PEER_CONFIGS = ("ehdran_small_{p}", "swinfusion_small_{p}", "mambadfuse_small_{p}",
                "mrscfusion_small_{p}_autoencoder", "mrscfusion_small_{p}_fusion",
                "dmfnet_small_{p}_denoiser", "dmfnet_small_{p}_fusion",
                "lagn_small_{p}_diffusion", "lagn_small_{p}_fusion")  # fmt: skip
PAIRS = ("ct-mri", "spect-mri", "pet-mri")


@dataclass
class Job:
    """What to do with one config: `action` is done, resume, continue, fresh or wait."""

    config: Path
    run: str
    snapshot: Path
    action: str
    args: list[str]
    why: str


def _step_of(progress: Path) -> tuple[int, int] | None:
    """(step, total_steps) from a progress.json, None when it is missing or unreadable."""
    try:
        p = json.loads(progress.read_text(encoding="utf-8"))
        return int(p["step"]), int(p["total_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _expand(value: str, base: Path) -> Path:
    path = Path(os.path.expandvars(value))
    return path if path.is_absolute() else base / path


def plan_job(config: Path, checkpoints: Path, root: Path) -> Job:
    """Decide how to run `config` from the files on this machine (paths in configs are relative to root)."""
    cfg = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    run = config.stem
    snapshot = checkpoints / run
    snap = _step_of(snapshot / "progress.json")
    if snap is not None and snap[0] >= snap[1]:
        return Job(config, run, snapshot, "done", [], f"snapshot at step {snap[0]}/{snap[1]}")
    args: list[str] = []
    init = cfg.get("init")
    init_path = _expand(init, root) if isinstance(init, str) else None
    stage1 = None  # the snapshot of the run this config starts from, which must be done first
    if init_path is not None and init.endswith("best.safetensors") and not init_path.is_file():
        stage1 = checkpoints / init_path.parent.name  # its run folder is not on this machine: take its snapshot
        args += ["--init", str(stage1 / "weights.safetensors")]
    elif init_path is not None and init_path.parent.parent == checkpoints:
        stage1 = init_path.parent  # a later stage started from another run's committed snapshot
    if stage1 is not None:
        s1 = _step_of(stage1 / "progress.json")
        if s1 is None or s1[0] < s1[1]:
            state = "not started" if s1 is None else f"at step {s1[0]}/{s1[1]}"
            return Job(config, run, snapshot, "wait", [], f"stage 1 ({stage1.name}) is {state}")
    out = _expand(str(cfg.get("out", f"runs/{run}")), root)
    local = _step_of(out / "progress.json") if (out / "last_state.pt").is_file() else None
    if local is not None and (snap is None or local[0] >= snap[0]):
        return Job(config, run, snapshot, "resume", ["--resume"], f"{out} at step {local[0]}/{local[1]}")
    if snap is not None:
        return Job(config, run, snapshot, "continue", args + ["--continue-from", str(snapshot)],
                   f"snapshot at step {snap[0]}/{snap[1]}")
    return Job(config, run, snapshot, "fresh", args, "no snapshot, no run folder")


def configs_from(args: argparse.Namespace) -> list[Path]:
    paths = [Path(c) for c in args.configs]
    for pair in args.peers:
        paths += [REPO / "configs" / "peers" / f"{name.format(p=pair)}.yaml" for name in PEER_CONFIGS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"train_queue: config not found: {', '.join(missing)}")
    if not paths:
        raise SystemExit("train_queue: no configs (give config files and/or --peers PAIR)")
    return paths


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", help="training configs, in the order they run")
    parser.add_argument("--peers", action="append", default=[], choices=PAIRS,
                        help="add the six peers' configs for this pair set (repeatable)")
    parser.add_argument("--minutes", type=float, default=150.0, help="deadline, counted from now")
    parser.add_argument("--reserve", type=float, default=5.0,
                        help="minutes kept per run for its last validation and snapshot")
    parser.add_argument("--min-minutes", type=float, default=8.0, help="start no run with less time than this left")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (the peers' configs say 1, for two side by side; one at a "
                             "time, give the machine's cores; never more threads in all than cores: on 2 cores "
                             "a 2-thread queue beside a 1-thread run slowed both 1.4-1.7x)")
    parser.add_argument("--checkpoints", type=Path, default=REPO / "checkpoints")
    parser.add_argument("--neurofuse", default=None, help="the neurofuse command (default: this Python's)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = time.monotonic() + 60 * args.minutes
    command = [args.neurofuse] if args.neurofuse else [sys.executable, "-m", "neurofuse"]
    for config in configs_from(args):
        job = plan_job(config, args.checkpoints, REPO)
        left = (deadline - time.monotonic()) / 60
        print(f"[train_queue] {job.run}: {job.action} ({job.why}); {left:.0f} min left", flush=True)
        if job.action == "done" or args.dry_run:
            continue
        if job.action == "wait":
            print("[train_queue] stopping: a stage 2 cannot start before its stage 1 is done", flush=True)
            return 0
        if left < args.min_minutes:
            print(f"[train_queue] stopping: under {args.min_minutes:g} min left", flush=True)
            return 0
        threads = ["--threads", str(args.threads)] if args.threads else []
        cmd = [*command, "train", "--config", str(config), *job.args, *threads,
               "--max-minutes", f"{left - args.reserve:.1f}", "--snapshot-to", str(job.snapshot)]
        print("[train_queue] " + " ".join(cmd), flush=True)
        rc = subprocess.call(cmd, cwd=REPO)
        if rc != 0:
            print(f"[train_queue] {job.run} failed (exit {rc}); stopping", flush=True)
            return rc
        step = _step_of(job.snapshot / "progress.json")
        if step is None or step[0] < step[1]:  # budget-stopped: the deadline is near
            print(f"[train_queue] {job.run} stopped at step {step}; stopping", flush=True)
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
