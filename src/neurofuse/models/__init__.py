"""Fusion networks: a registry (`create_model`, `list_models`), their pretrained configs and the models.

Nothing is imported up front: `neurofuse.models.pretrained` (the shipped weights) needs no torch, and
the registry imports every model module the first time a model is listed or built, so a model file
registers itself just by existing.
"""

from __future__ import annotations

import importlib

_API = {
    "create_model": "registry",
    "list_models": "registry",
    "register_model": "registry",
    "load_weights": "registry",
    "list_pretrained": "pretrained",
    "param_groups": "optim",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
