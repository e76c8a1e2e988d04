"""Pretrained configs of the shipped weights, in timm's style: one entry per `arch.tag`.

`neurofuse/weights/manifest.json` is the one place that describes a shipped weights file:
`{"<arch>.<tag>": {"file", "sha256", "source", "model_args"}}`, in order; the first tag of an arch
is its default (what a learned method runs when neither `pretrained` nor `weights` is given).
`model_args` are the architecture arguments the weights were trained with (an ablation's
`{"scan": "single"}`); the safetensors metadata that `neurofuse train` writes into each file
(`model`, `model_args`) must agree with its entry (tests/models/test_registry.py checks every file).

This module reads JSON only (no torch), so the fusion layer can name a model's weights cheaply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from neurofuse.errors import UsageError


@dataclass(frozen=True)
class PretrainedCfg:
    """One shipped weights file: `arch.tag`, the file under neurofuse/weights/, its sha256 and arguments."""

    arch: str
    tag: str
    file: str
    sha256: str
    source: str = ""
    model_args: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.arch}.{self.tag}"

    @property
    def path(self) -> Path:
        return Path(str(resources.files("neurofuse") / "weights" / self.file))


def split_name(name: str) -> tuple[str, str | None]:
    """`"clinicalfmamba_2d.ct-mri"` -> `("clinicalfmamba_2d", "ct-mri")`; a bare arch gets tag None."""
    arch, _, tag = name.partition(".")
    return arch, tag or None


def _manifest() -> dict:
    path = resources.files("neurofuse") / "weights" / "manifest.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def pretrained_cfgs() -> dict[str, PretrainedCfg]:
    """Every shipped weights entry by `arch.tag`, in manifest order (each arch's default first)."""
    out = {}
    for key, entry in _manifest().items():
        arch, tag = split_name(key)
        if tag is None:
            raise ValueError(f"weights manifest key {key!r} is not <arch>.<tag>")
        out[key] = PretrainedCfg(arch, tag, entry["file"], entry["sha256"], entry.get("source", ""),
                                 dict(entry.get("model_args") or {}))
    return out


def list_pretrained(model: str | None = None) -> list[str]:
    """Shipped weights as `arch.tag` (for one arch if given); each arch's default tag comes first."""
    return [k for k, c in pretrained_cfgs().items() if model is None or c.arch == model]


def default_tag(model: str) -> str | None:
    """The default (first) shipped tag of `model`, or None when it ships no weights."""
    tags = [c.tag for c in pretrained_cfgs().values() if c.arch == model]
    return tags[0] if tags else None


def get_pretrained_cfg(model: str, tag: str | None = None) -> PretrainedCfg:
    """The pretrained config `model.tag` (tag None: the default); UsageError naming what is shipped."""
    tag = tag if tag is not None else default_tag(model)
    cfg = pretrained_cfgs().get(f"{model}.{tag}") if tag is not None else None
    if cfg is None:
        shipped = ", ".join(list_pretrained(model)) or "none"
        what = f"{model}.{tag}" if tag is not None else model
        raise UsageError(f"no shipped weights {what!r}; available: {shipped}")
    return cfg
