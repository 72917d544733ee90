"""Scan an ONNX ModelProto for external-data references, without the onnx package.

The runtime may not depend on onnx, and ONNX Runtime resolves external data paths itself (relative to the
working directory when a model is loaded from bytes), so a bundle's graph must be proven self-contained
before ONNX Runtime sees it. This walks the protobuf wire format and descends only into the messages that
can hold a TensorProto. Field numbers are those of onnx/onnx.proto:

  ModelProto         graph=7, training_info=20, functions=25
  TrainingInfoProto  initialization=1, algorithm=2
  FunctionProto      name=1, node=7, attribute_proto=11
  GraphProto         node=1, name=2, initializer=5, sparse_initializer=15
  NodeProto          name=3, op_type=4, attribute=5, domain=7
  AttributeProto     name=1, t=5, g=6, tensors=10, graphs=11, sparse_tensor=22, sparse_tensors=23
  SparseTensorProto  values=1, indices=2
  TensorProto        name=8, external_data=13 (StringStringEntryProto key=1 value=2), data_location=14
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL

# Message kinds, and for each the fields holding a sub-message worth descending into.
_MODEL, _TRAINING, _FUNCTION, _GRAPH, _NODE, _ATTR, _SPARSE, _TENSOR = range(8)
_CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
    _FUNCTION: {7: _NODE, 11: _ATTR},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTR},
    _ATTR: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _TENSOR: {},
}
# The string field that names a message of each kind (used to say where a reference was found).
_NAME_FIELD = {_FUNCTION: 1, _GRAPH: 2, _NODE: 3, _ATTR: 1, _TENSOR: 8}
_KIND_WORD = {
    _MODEL: "model",
    _TRAINING: "training info",
    _FUNCTION: "function",
    _GRAPH: "graph",
    _NODE: "node",
    _ATTR: "attribute",
    _SPARSE: "sparse tensor",
    _TENSOR: "tensor",
}


class ProtoError(ValueError):
    """The bytes are not a well-formed protobuf message."""


@dataclass(frozen=True)
class ExternalRef:
    """A tensor whose data lives outside the graph."""

    tensor: str
    location: str | None
    where: str  # e.g. "graph 'main' > node 'If_0' > attribute 'then_branch' > graph 'then'"


@dataclass
class ModelScan:
    has_graph: bool = False
    op_types: Counter[str] = field(default_factory=Counter)  # "Op" or "domain:Op"
    external: list[ExternalRef] = field(default_factory=list)


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            break
    raise ProtoError(f"bad varint before byte {pos}")


def _fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield (field, wire_type, a, b): a varint's value in a; a length-delimited payload as buf[a:b]."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtoError(f"field number 0 at byte {pos}")
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, 0
            continue
        if wire == _LEN:
            length, pos = _varint(buf, pos, end)
            stop = pos + length
        elif wire == _I64:
            stop = pos + 8
        elif wire == _I32:
            stop = pos + 4
        else:
            raise ProtoError(f"unsupported wire type {wire} at byte {pos}")
        if stop > end:
            raise ProtoError(f"field {number} runs past the end of its message (byte {end})")
        yield number, wire, pos, stop
        pos = stop


def _text(buf: bytes, a: int, b: int) -> str:
    return buf[a:b].decode("utf-8", errors="replace")


def _external_location(buf: bytes, a: int, b: int) -> tuple[str, str]:
    key = value = ""
    for number, wire, x, y in _fields(buf, a, b):
        if wire == _LEN and number == 1:
            key = _text(buf, x, y)
        elif wire == _LEN and number == 2:
            value = _text(buf, x, y)
    return key, value


def _scan_tensor(buf: bytes, a: int, b: int, where: str, out: ModelScan) -> None:
    name, location, external = "?", None, False
    for number, wire, x, y in _fields(buf, a, b):
        if number == 8 and wire == _LEN:
            name = _text(buf, x, y)
        elif number == 13 and wire == _LEN:
            external = True
            key, value = _external_location(buf, x, y)
            if key == "location":
                location = value
        elif number == 14 and wire == _VARINT and x == _EXTERNAL:
            external = True
    if external:
        out.external.append(ExternalRef(name, location, where))


def scan_model(data: bytes) -> ModelScan:
    """Walk a serialized ModelProto; raise ProtoError when it is not well-formed protobuf."""
    out = ModelScan()
    # An explicit stack (not recursion) so that deeply nested subgraphs cannot exhaust Python's stack.
    stack: list[tuple[int, int, int, str]] = [(_MODEL, 0, len(data), "")]
    while stack:
        kind, a, b, parent = stack.pop()
        if kind == _TENSOR:
            _scan_tensor(data, a, b, parent or "model", out)
            continue
        name, op_type, domain = "", "", ""
        children: list[tuple[int, int, int]] = []
        for number, wire, x, y in _fields(data, a, b):
            if wire != _LEN:
                continue
            if number == _NAME_FIELD.get(kind):
                name = _text(data, x, y)
            elif kind == _NODE and number == 4:
                op_type = _text(data, x, y)
            elif kind == _NODE and number == 7:
                domain = _text(data, x, y)
            elif number in _CHILDREN[kind]:
                children.append((_CHILDREN[kind][number], x, y))
        if kind == _MODEL:
            out.has_graph = any(child == _GRAPH for child, _, _ in children)
        if kind == _NODE:
            out.op_types[f"{domain}:{op_type}" if domain and domain != "ai.onnx" else op_type] += 1
        label = f"{_KIND_WORD[kind]} '{name}'" if name else _KIND_WORD[kind]
        where = "" if kind == _MODEL else f"{parent} > {label}" if parent else label
        stack.extend((child, x, y, where) for child, x, y in reversed(children))
    return out
