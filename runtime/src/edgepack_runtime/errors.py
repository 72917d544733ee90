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


class SignatureError(BundleError):
    """A bundle refused over its signature (manifest.sig). `reason` says which refusal: "missing",
    "malformed", "other-key" (signed by another key than the one given) or "changed" (the signature is not
    over this manifest: it changed after signing, or the signature file was altered)."""

    def __init__(self, file: str, reason: str, problem: str) -> None:
        self.reason = reason
        super().__init__(file, problem)


class TextTypeError(TypeError):
    """A text that is not a `str` (None, bytes, a number, ...) was passed to predict."""
