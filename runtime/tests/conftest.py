"""Fixtures: tiny bundles built in a temporary folder (graphs from tiny_onnx, tokenizers from bundle_kit).

Nothing is imported from this module by name (a build-side conftest.py may share the test session): shared
helpers live in bundle_kit and tiny_onnx."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgepack_runtime import Classifier, cpu

from . import tiny_onnx
from .bundle_kit import MakeBundle, write_bundle


@pytest.fixture
def make_bundle(tmp_path: Path) -> MakeBundle:
    """make_bundle(model=None, graph={...}, **write_bundle_kwargs) -> a fresh bundle folder."""
    counter = itertools.count()

    def make(model: bytes | None = None, graph: dict[str, Any] | None = None, **kwargs: Any) -> Path:
        if model is None:
            model = tiny_onnx.classifier_graph(**(graph or {}))
        return write_bundle(tmp_path / f"bundle{next(counter)}", model, **kwargs)

    return make


@pytest.fixture
def bundle(make_bundle: MakeBundle) -> Path:
    return make_bundle()


@pytest.fixture(scope="session")
def shared_classifier(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    """One classifier for the read-only tests (Hypothesis, threads)."""
    folder = write_bundle(tmp_path_factory.mktemp("shared") / "tiny", tiny_onnx.classifier_graph())
    return Classifier.load(folder)


@pytest.fixture
def fresh_warnings() -> Iterator[None]:
    """Forget which target warnings were already shown, so a test sees its own."""
    with cpu._warned_lock:
        saved = set(cpu._warned)
        cpu._warned.clear()
    yield
    with cpu._warned_lock:
        cpu._warned.clear()
        cpu._warned.update(saved)
