"""Exceptions raised by the runtime. Every refusal to load a bundle is a `BundleError`."""

from __future__ import annotations


class BundleError(Exception):
    """A bundle that cannot be trusted or used. The message names the file and the problem.

    `file` is the bundle member at fault (e.g. "model.onnx"), or None when the folder itself is at fault.
    """

    def __init__(self, file: str | None, problem: str) -> None:
        self.file = file
        self.problem = problem
        super().__init__(f"{file}: {problem}" if file else problem)


class TargetMismatchError(BundleError):
    """Raised by `Classifier.load(..., strict=True)` when the CPU lacks a feature the bundle relies on."""


class TextTypeError(TypeError):
    """A text that is not a `str` (None, bytes, a number, ...) was passed to predict."""
