"""The hand-written graphs of tiny_onnx are what onnx itself reads and writes (build environment only)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from . import tiny_onnx

onnx = pytest.importorskip("onnx")

VARIANTS = [
    {},
    {"token_types": False},
    {"input_type": tiny_onnx.INT32, "static_labels": False},
    {"dynamic_quant": True},
    {"external_bias": "../secret.bin"},
]


@pytest.mark.parametrize("options", VARIANTS)
def test_classifier_graph_round_trips_through_onnx(options: dict[str, Any]) -> None:
    data = tiny_onnx.classifier_graph(**options)
    model = onnx.load_from_string(data)
    assert model.SerializeToString() == data  # same fields, same order, same encoding
    assert model.opset_import[0].version == 17
    assert [i.name for i in model.graph.input][:2] == ["input_ids", "attention_mask"]


@pytest.mark.parametrize("options", VARIANTS[:4])
def test_classifier_graph_passes_the_onnx_checker(options: dict[str, Any]) -> None:
    onnx.checker.check_model(onnx.load_from_string(tiny_onnx.classifier_graph(**options)), full_check=True)


def _tensors(nodes: Iterable[Any]) -> list[Any]:
    """Attribute tensors of these nodes and of the subgraphs they hold."""
    found: list[Any] = []
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                found.append(attr.t)
            if attr.HasField("g"):
                found += [*attr.g.initializer, *_tensors(attr.g.node)]
    return found


@pytest.mark.parametrize("where", tiny_onnx.EXTERNAL_PLACES)
def test_external_data_graphs_round_trip_and_are_external_for_onnx(where: str) -> None:
    from onnx.external_data_helper import uses_external_data

    data = tiny_onnx.external_data_graph(where, "../secret.bin")
    model = onnx.load_from_string(data)
    assert model.SerializeToString() == data
    tensors = [
        *_tensors(model.graph.node),
        *model.graph.initializer,
        *(s.values for s in model.graph.sparse_initializer),
    ]
    tensors += [t for f in model.functions for t in _tensors(f.node)]
    assert any(uses_external_data(t) for t in tensors)
