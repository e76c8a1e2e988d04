"""neurofuse: multimodal medical image fusion in 2D and 3D.

The public API in one place: read and write images with their geometry (`neurofuse.io`), fuse them
with any registered method (`fuse`, `fuse_many`, `list_methods`), build networks by name
(`create_model`, `list_models`; imported on first use, so `import neurofuse` does not load torch).
"""

from neurofuse.errors import NeurofuseError
from neurofuse.fusion import fuse, fuse_many, get_method, list_methods

__version__ = "0.1.0"

__all__ = ["NeurofuseError", "create_model", "fuse", "fuse_many", "get_method", "list_methods", "list_models",
           "__version__"]


def __getattr__(name: str):
    if name in ("create_model", "list_models"):
        from neurofuse.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'neurofuse' has no attribute {name!r}")
