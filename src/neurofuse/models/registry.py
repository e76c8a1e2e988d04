"""Model registry in the style of timm: `@register_model` factories, `create_model(name, **overrides)`.

Pretrained weights ship inside the package as safetensors under `neurofuse/weights/`, listed in
`weights/manifest.json` as `{"<model>/<tag>": {"file": ..., "sha256": ...}}`. Loading checks the hash
and never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import torch.nn as nn
from safetensors.torch import load_file

from neurofuse.errors import InputError, UsageError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a factory `fn(**overrides) -> nn.Module` under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def _manifest() -> dict:
    path = resources.files("neurofuse") / "weights" / "manifest.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def list_pretrained(model: str | None = None) -> list[str]:
    """Shipped weights as "<model>/<tag>" (for one model if given)."""
    return sorted(k for k in _manifest() if model is None or k.split("/")[0] == model)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_weights(model: nn.Module, path: str | Path, sha256: str | None = None) -> nn.Module:
    """Load a safetensors state dict into `model` (strict), checking the file's hash if given."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: weights file not found")
    if sha256 is not None and sha256_file(path) != sha256:
        raise InputError(f"{path}: sha256 mismatch, the weights file is corrupt or not the shipped one")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for bad headers
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from None
    ref = model.state_dict()
    missing = [k for k in ref if k not in state]
    unexpected = [k for k in state if k not in ref]
    wrong = [k for k in ref if k in state and state[k].shape != ref[k].shape]
    if missing or unexpected or wrong:
        raise InputError(
            f"{path}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shape {wrong[:3]})"
        )
    model.load_state_dict({k: v.to(ref[k].dtype) for k, v in state.items()})
    return model


def create_model(name: str, pretrained: str | None = None, **overrides) -> nn.Module:
    """Build registered model `name` with config `overrides`; `pretrained` names shipped weights."""
    if not _MODELS:
        import neurofuse.models  # noqa: F401  (fills the registry)
    if name not in _MODELS:
        raise UsageError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    model = _MODELS[name](**overrides)
    if pretrained is not None:
        key = f"{name}/{pretrained}"
        entry = _manifest().get(key)
        if entry is None:
            raise UsageError(f"no shipped weights {key!r}; available: {', '.join(list_pretrained(name)) or 'none'}")
        path = Path(str(resources.files("neurofuse") / "weights" / entry["file"]))
        load_weights(model, path, entry["sha256"])
    return model
