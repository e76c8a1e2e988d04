"""Model registry in the style of timm: `@register_model` factories, `create_model(name, **overrides)`.

Pretrained weights ship inside the package as safetensors under `neurofuse/weights/`, described by one
pretrained config per `arch.tag` (`neurofuse.models.pretrained`, from `weights/manifest.json`; the
first tag of an arch is its default). Loading checks the hash and never unpickles anything.

The registry fills itself on first use by importing every module of `neurofuse.models`, so a model
file registers itself just by existing and nothing is imported before a model is asked for.
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path

import torch.nn as nn
from safetensors.torch import load_file

from neurofuse.errors import InputError, UsageError
from neurofuse.models.pretrained import get_pretrained_cfg, split_name

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_NOT_MODELS = {"registry", "pretrained", "optim"}
_filled = False


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a factory `fn(**overrides) -> nn.Module` under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def register_variants(model_cls: type[nn.Module], config_cls: type, variants: dict[str, tuple[str, dict]]) -> None:
    """Register one factory per variant: `{name: (docstring, config defaults)}`; overrides win over defaults.

    For the models built as `model_cls(config_cls(**fields))` (the peers), so each file ends with one
    table of its variants instead of a factory function per size.
    """
    for name, (doc, defaults) in variants.items():
        register_model(_variant(model_cls, config_cls, name, doc, defaults))


def _variant(model_cls: type[nn.Module], config_cls: type, name: str, doc: str, defaults: dict) -> Callable:
    def factory(**overrides) -> nn.Module:
        return model_cls(config_cls(**{**defaults, **overrides}))

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    return factory


def _fill() -> None:
    """Import every model module of the package once (each registers its factories)."""
    global _filled
    if _filled:
        return
    import neurofuse.models as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name not in _NOT_MODELS:
            importlib.import_module(f"{pkg.__name__}.{mod.name}")
    _filled = True


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    _fill()
    return sorted(_MODELS)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_weights(model: nn.Module, path: str | Path, sha256: str | None = None,
                 optional: tuple[str, ...] = ()) -> nn.Module:
    """Load a safetensors state dict into `model` (strict), checking the file's hash if given.

    `optional`: prefixes of parameters the file may lack (they keep the model's own values; a warm start
    into a model with an added part, the model's `init_optional`)."""
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
    missing = [k for k in ref if k not in state and not k.startswith(optional)]
    unexpected = [k for k in state if k not in ref]
    wrong = [k for k in ref if k in state and state[k].shape != ref[k].shape]
    if missing or unexpected or wrong:
        raise InputError(
            f"{path}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shape {wrong[:3]})"
        )
    model.load_state_dict({**ref, **{k: v.to(ref[k].dtype) for k, v in state.items()}})
    return model


def create_model(name: str, pretrained: str | bool | None = None, **overrides) -> nn.Module:
    """Build registered model `name` with config `overrides`, optionally with shipped weights.

    `pretrained`: a shipped tag (`"ct-mri"`), True for the model's default tag, None/False for random
    initialisation; `name` may also be timm's `"arch.tag"` (then the tag's weights are loaded). The
    pretrained config's `model_args` build the architecture the weights were trained with.
    """
    _fill()
    arch, tag = split_name(name)
    if tag is not None and pretrained in (None, True):
        pretrained = tag
    if arch not in _MODELS:
        raise UsageError(f"unknown model {arch!r}; available: {', '.join(list_models())}")
    if pretrained is None or pretrained is False:
        return _MODELS[arch](**overrides)
    cfg = get_pretrained_cfg(arch, None if pretrained is True else str(pretrained))
    model = _MODELS[arch](**{**cfg.model_args, **overrides})
    return load_weights(model, cfg.path, cfg.sha256)
