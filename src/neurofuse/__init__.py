"""neurofuse: multimodal medical image fusion in 2D and 3D.

The public API in one place: read and write images with their geometry (`neurofuse.io`), fuse them
with any registered method (`fuse`, `list_methods`), build networks by name (`create_model`).
"""

from neurofuse.errors import NeurofuseError
from neurofuse.fusion import fuse, get_method, list_methods

__version__ = "0.1.0"

__all__ = ["NeurofuseError", "fuse", "get_method", "list_methods", "__version__"]
