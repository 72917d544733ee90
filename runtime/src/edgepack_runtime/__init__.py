"""edgepack-runtime: load a verified edgepack bundle and classify text with ONNX Runtime (no torch).

from edgepack_runtime import Classifier, BundleError
clf = Classifier.load("bundles/clinc-int8", threads=1)
clf.predict("what is the pin number for my account?").label
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edgepack_runtime.errors import BundleError, SignatureError, TargetMismatchError, TextTypeError

if TYPE_CHECKING:
    from edgepack_runtime.classifier import Classifier, Prediction

__version__ = "0.1.0"
__all__ = [
    "BundleError",
    "Classifier",
    "Prediction",
    "SignatureError",
    "TargetMismatchError",
    "TextTypeError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # Classifier pulls in onnxruntime; importing it on first use keeps `edgepack-run --help` instant.
    if name in ("Classifier", "Prediction"):
        return getattr(importlib.import_module("edgepack_runtime.classifier"), name)
    raise AttributeError(f"module 'edgepack_runtime' has no attribute {name!r}")
