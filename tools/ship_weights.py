"""Ship a training run's best weights inside the package: float16 safetensors + manifest entry.

    python tools/ship_weights.py runs/clinicalfmamba_2d_spect-mri --model clinicalfmamba_2d --tag spect-mri

Writes `src/neurofuse/weights/<model>_<tag>.safetensors` and records its sha256 (checked at every
load) in `weights/manifest.json`, then checks that `create_model(model, pretrained=tag)` loads it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from neurofuse.io import atomic_write_path
from neurofuse.models.registry import create_model, sha256_file
from neurofuse.train import export_fp16

WEIGHTS = Path(__file__).resolve().parents[1] / "src/neurofuse/weights"


def ship(run: Path, model: str, tag: str, which: str = "best") -> dict:
    dst = WEIGHTS / f"{model}_{tag}.safetensors"
    export_fp16(run / f"{which}.safetensors", dst)
    manifest_path = WEIGHTS / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest[f"{model}/{tag}"] = {"file": dst.name, "sha256": sha256_file(dst), "source": f"{run.name}/{which}"}
    with atomic_write_path(manifest_path) as tmp:
        tmp.write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n", encoding="utf-8")
    create_model(model, pretrained=tag)  # loads with the hash check
    return manifest[f"{model}/{tag}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--which", default="best", choices=["best", "last"])
    args = parser.parse_args()
    print(json.dumps(ship(args.run, args.model, args.tag, args.which), indent=2))


if __name__ == "__main__":
    main()
