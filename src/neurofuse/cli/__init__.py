"""Command line: `neurofuse <command>`. Every module in this package adds its commands to `main`."""

import importlib
import pkgutil

from neurofuse.cli.app import main

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "app":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["main"]
