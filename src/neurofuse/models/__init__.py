"""Fusion networks: a registry (`create_model`, `list_models`) and the models that fill it."""

from neurofuse.models.registry import create_model, list_models, list_pretrained, register_model

__all__ = ["create_model", "list_models", "list_pretrained", "register_model"]
