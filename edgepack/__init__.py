"""edgepack: fine-tuned transformer classifier -> small, fast, verified ONNX Runtime bundle.

From Python, as the CLI does it::

    from edgepack import build, load_recipe

    built = build(load_recipe("generic", {"data.source": "mydata/", "data.label_column": "intent"}))
    print(built.path, built.manifest["metrics"]["test"]["accuracy"])

`build` and `load_recipe` are imported on first use, so `import edgepack` stays light (no torch).
"""

from typing import Any

__version__ = "0.1.0"

from edgepack.errors import EdgepackError, RecipeError

__all__ = ["EdgepackError", "RecipeError", "__version__", "build", "load_recipe"]


def __getattr__(name: str) -> Any:
    """`edgepack.build` (edgepack.pipeline.build) and `edgepack.load_recipe` (edgepack.recipe.load_recipe)."""
    if name == "build":
        from edgepack.pipeline import build

        return build
    if name == "load_recipe":
        from edgepack.recipe import load_recipe

        return load_recipe
    raise AttributeError(f"module 'edgepack' has no attribute {name!r}")
