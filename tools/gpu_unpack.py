"""Unpack what tools/gpu_train_all.py brought back: check, extract into checkpoints/<run>/, optionally ship.

    python tools/gpu_unpack.py FOLDER [--dest checkpoints] [--overwrite] [--ship] [--weights-dir DIR]

FOLDER holds `manifest.json` and the tar.gz shards it lists (the device call's `files_at`). Every shard's
size and sha256 are checked against the manifest, every member's sha256 after extraction; members must be
plain `<run>/<file>` names. Each run lands in `<dest>/<run>/`, a snapshot folder: `weights.safetensors` +
`progress.json` (float16 EMA weights and schedule position), `best.safetensors` (float16, what is shipped),
`log.csv`, `best.json`, `train.log`, and `config.yaml` rewritten for this machine (data from
`${NEUROFUSE_DATA}`, out `runs/<run>`, a stage-2 init pointing at the unpacked stage-1 weights), so

    neurofuse train --config checkpoints/<run>/config.yaml --continue-from checkpoints/<run>

continues a budget-stopped run. `--ship` puts each final run's best weights into the package as
`<model>.<pair>` through `tools/ship_weights.py` (`--weights-dir` ships elsewhere, e.g. for a test).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ship_weights import WEIGHTS, ship  # noqa: E402

SETS = {"ct-mri": "CT-MRI", "spect-mri": "SPECT-MRI", "pet-mri": "PET-MRI"}


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest, after checking every shard it lists (present, size, sha256)."""
    path = folder / "manifest.json"
    if not path.is_file():
        raise SystemExit(f"{path}: not found")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    for shard in manifest["shards"]:
        f = folder / shard["file"]
        if not f.is_file():
            raise SystemExit(f"{f}: listed in the manifest but missing")
        data = f.read_bytes()
        if len(data) != shard["bytes"] or _sha256_bytes(data) != shard["sha256"]:
            raise SystemExit(f"{f}: size or sha256 differs from the manifest (damaged in transfer?)")
    return manifest


def _member_path(name: str) -> tuple[str, str]:
    parts = PurePosixPath(name).parts
    if len(parts) != 2 or any(p in ("", ".", "..") for p in parts) or name.startswith("/"):
        raise SystemExit(f"shard member {name!r} is not <run>/<file>")
    return parts[0], parts[1]


def unpack(folder: Path, dest: Path, overwrite: bool = False) -> dict[str, Any]:
    """Extract every shard into `dest/<run>/`; returns the manifest."""
    manifest = read_manifest(folder)
    runs = {m["path"].split("/")[0] for s in manifest["shards"] for m in s["members"]}
    existing = sorted(r for r in runs if (dest / r).exists())
    if existing and not overwrite:
        raise SystemExit(f"{dest}: {', '.join(existing)} exist already (--overwrite replaces their files)")
    for shard in manifest["shards"]:
        want = {m["path"]: m["sha256"] for m in shard["members"]}
        with tarfile.open(folder / shard["file"], "r:gz") as tar:
            for member in tar.getmembers():
                run, name = _member_path(member.name)
                if not member.isfile() or member.name not in want:
                    raise SystemExit(f"{shard['file']}: unexpected member {member.name!r}")
                data = tar.extractfile(member).read()
                if _sha256_bytes(data) != want[member.name]:
                    raise SystemExit(f"{shard['file']}: {member.name} differs from the manifest")
                (dest / run).mkdir(parents=True, exist_ok=True)
                (dest / run / name).write_bytes(data)
    by_run = {r["run"]: r for r in manifest["runs"]}
    for run in runs:
        if (dest / run / "config.yaml").is_file() and run in by_run:
            _localise_config(dest / run / "config.yaml", by_run[run], by_run, dest)
    return manifest


def _localise_config(path: Path, info: dict[str, Any], by_run: dict[str, Any], dest: Path) -> None:
    """The run's resolved config with this machine's paths: data from ${NEUROFUSE_DATA}, out runs/<run>,
    a path init (stage 2) to the unpacked stage-1 best weights; the budget flags of that call dropped."""
    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    cfg["data"] = "${NEUROFUSE_DATA}/harvard/" + SETS.get(info["pair"], info["pair"])
    cfg["out"] = f"runs/{info['run']}"
    init = cfg.get("init")
    if isinstance(init, str) and "/" in init:
        stage1 = Path(init).parent.name
        cfg["init"] = str(dest / stage1 / "best.safetensors") if stage1 in by_run else None
    for key in ("max_minutes", "max_steps", "resume", "continue_from"):
        cfg.pop(key, None)
    header = f"# {info['run']}: trained by tools/gpu_train_all.py; unpacked by tools/gpu_unpack.py\n"
    path.write_text(header + yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")


def ship_all(manifest: dict[str, Any], dest: Path, weights_dir: Path = WEIGHTS) -> list[str]:
    """Ship every final run's best weights as <model>.<pair>; returns the arch.tag names shipped."""
    if manifest.get("smoke") and Path(weights_dir).resolve() == WEIGHTS.resolve():
        raise SystemExit("these are smoke-test results: not shipped into the package")
    shipped = []
    for info in manifest["runs"]:
        target = info.get("ship")
        if not target or not (dest / info["run"] / "best.safetensors").is_file():
            continue
        ship(dest / info["run"], target["model"], target["tag"], "best", weights_dir)
        shipped.append(f"{target['model']}.{target['tag']}")
    return shipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="Holds manifest.json and the shards.")
    parser.add_argument("--dest", type=Path, default=Path("checkpoints"))
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--ship", action="store_true", help="Ship each final run's best weights.")
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS)
    args = parser.parse_args()
    manifest = unpack(args.folder, args.dest, args.overwrite)
    for info in manifest["runs"]:
        print(f"{info['run']}: {info['status']} ({info.get('stopped')}), step {info.get('step')}/"
              f"{info.get('total_steps')}, "
              f"{(info.get('pixels') or 0) / 1e6:.1f} M pixels -> {args.dest / info['run']}")
    for item in manifest.get("left_out", []):
        print(f"left out on the GPU machine: {item['path']} ({item['why']})")
    if args.ship:
        print("shipped: " + ", ".join(ship_all(manifest, args.dest, args.weights_dir)))


if __name__ == "__main__":
    main()
