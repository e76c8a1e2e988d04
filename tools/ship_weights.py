"""Ship a training run's best weights inside the package: float16 safetensors + manifest entry.

    python tools/ship_weights.py runs/clinicalfmamba_2d_spect-mri --model clinicalfmamba_2d --tag spect-mri

Writes `src/neurofuse/weights/<model>_<tag>.safetensors` and records it in `weights/manifest.json` under
`<model>.<tag>` (file, sha256 checked at every load, source, and the `model_args` the run was trained
with, read from the file's metadata); an existing entry is updated in place, a new one appended (the
first tag of a model stays its default). Then checks that `create_model(model, pretrained=tag)` loads it.
`run` may be a training run folder or a snapshot folder (`neurofuse train --snapshot-to`, or
`tools/gpu_unpack.py`) holding `<which>.safetensors`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from neurofuse.io import atomic_write_path
from neurofuse.models.registry import create_model, load_weights, sha256_file
from neurofuse.train import export_fp16

WEIGHTS = Path(__file__).resolve().parents[1] / "src/neurofuse/weights"


def _model_args(path: Path, model: str) -> dict:
    """The architecture arguments recorded in the weights' metadata by `neurofuse train` ({} if none)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = dict(fh.metadata() or {})
    if meta.get("model", model) != model:
        raise SystemExit(f"{path}: weights of {meta['model']!r}, not {model!r}")
    return json.loads(meta.get("model_args") or "{}")


def ship(run: Path, model: str, tag: str, which: str = "best", weights_dir: Path = WEIGHTS) -> dict:
    """Export `run/<which>.safetensors` as float16 into `weights_dir` and record it in its manifest."""
    run, weights_dir = Path(run), Path(weights_dir)
    dst = weights_dir / f"{model}_{tag}.safetensors"
    export_fp16(run / f"{which}.safetensors", dst)
    model_args = _model_args(dst, model)
    manifest_path = weights_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    key = f"{model}.{tag}"
    manifest[key] = {"file": dst.name, "sha256": sha256_file(dst), "source": f"{run.name}/{which}",
                     "model_args": model_args}
    with atomic_write_path(manifest_path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if weights_dir.resolve() == WEIGHTS.resolve():
        create_model(model, pretrained=tag)  # loads through the manifest, with the hash check
    else:
        load_weights(create_model(model, **model_args), dst, sha256=manifest[key]["sha256"])
    return manifest[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--which", default="best", choices=["best", "last", "last_ema", "weights"])
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS, help="Default: the package's weights folder.")
    args = parser.parse_args()
    print(json.dumps(ship(args.run, args.model, args.tag, args.which, args.weights_dir), indent=2))


if __name__ == "__main__":
    main()
