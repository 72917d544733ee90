"""edgepack: fine-tuned transformer classifier -> small, fast, verified ONNX Runtime bundle."""

__version__ = "0.1.0"

from edgepack.errors import EdgepackError, RecipeError

__all__ = ["EdgepackError", "RecipeError", "__version__"]
