"""Fusion networks: a registry (`create_model`, `list_models`) and the models that fill it.

Every module in this package is imported here, so a model file registers itself just by existing.
"""

import importlib
import pkgutil

from neurofuse.models.registry import create_model, list_models, list_pretrained, register_model

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "registry":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["create_model", "list_models", "list_pretrained", "register_model"]
