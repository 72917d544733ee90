"""Write small ONNX graphs as protobuf bytes, without the onnx package.

Why hand-written bytes: the runtime-only test environment has no onnx (the runtime must not need it), yet its
tests need real graphs: a tiny classifier ONNX Runtime can run, and graphs that point at external data. So
this module encodes the few ONNX messages it needs directly in the protobuf wire format, writing fields in
field-number order as protobuf itself does. It is checked against onnx where onnx is installed (the build
venv): test_rt_tiny_onnx.py parses every graph built here with onnx, runs onnx.checker on it, and checks
that onnx re-serializes it to the very same bytes. Field numbers are those of onnx/onnx.proto.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

FLOAT, UINT8, INT8, INT32, INT64 = 1, 2, 3, 6, 7  # TensorProto.DataType
_ATTR_INT, _ATTR_TENSOR, _ATTR_GRAPH = 2, 4, 5  # AttributeProto.AttributeType
_NUMPY = {FLOAT: np.float32, UINT8: np.uint8, INT8: np.int8, INT32: np.int32, INT64: np.int64}


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 values are written as 10-byte two's complement
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _len(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _str(field: int, text: str) -> bytes:
    return _len(field, text.encode("utf-8"))


def tensor(
    name: str, array: np.ndarray | None = None, *, external: str | None = None, dims: Sequence[int] = ()
) -> bytes:
    """A TensorProto holding `array` as raw_data, or (external=location) pointing at an external file."""
    if array is not None:
        dims, kind = array.shape, next(k for k, t in _NUMPY.items() if array.dtype == t)
    else:
        kind = FLOAT
    out = b"".join(_int(1, d) for d in dims) + _int(2, kind) + _str(8, name)
    if array is not None:
        out += _len(9, np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
    if external is not None:
        entries = [("location", external), ("offset", "0"), ("length", str(4 * int(np.prod(dims))))]
        out += b"".join(_len(13, _str(1, k) + _str(2, v)) for k, v in entries) + _int(14, 1)
    return out


def value_info(name: str, elem_type: int, shape: Iterable[str | int]) -> bytes:
    dims = b"".join(_len(1, _str(2, d) if isinstance(d, str) else _int(1, d)) for d in shape)
    return _str(1, name) + _len(2, _len(1, _int(1, elem_type) + _len(2, dims)))


def attribute(name: str, *, i: int | None = None, t: bytes | None = None, g: bytes | None = None) -> bytes:
    out = _str(1, name)
    if i is not None:
        return out + _int(3, i) + _int(20, _ATTR_INT)
    if t is not None:
        return out + _len(5, t) + _int(20, _ATTR_TENSOR)
    assert g is not None
    return out + _len(6, g) + _int(20, _ATTR_GRAPH)


def node(
    op: str, inputs: Sequence[str], outputs: Sequence[str], name: str = "", attrs: Sequence[bytes] = ()
) -> bytes:
    out = b"".join(_str(1, x) for x in inputs) + b"".join(_str(2, x) for x in outputs)
    out += _str(3, name or f"{op}_{outputs[0]}") + _str(4, op)
    return out + b"".join(_len(5, a) for a in attrs)


def graph(
    name: str,
    nodes: Sequence[bytes],
    initializers: Sequence[bytes],
    inputs: Sequence[bytes],
    outputs: Sequence[bytes],
    sparse_initializers: Sequence[bytes] = (),
) -> bytes:
    out = b"".join(_len(1, n) for n in nodes) + _str(2, name)
    out += b"".join(_len(5, t) for t in initializers)
    out += b"".join(_len(11, v) for v in inputs) + b"".join(_len(12, v) for v in outputs)
    return out + b"".join(_len(15, s) for s in sparse_initializers)


def sparse_tensor(values: bytes, indices: bytes, dims: Sequence[int]) -> bytes:
    return _len(1, values) + _len(2, indices) + b"".join(_int(3, d) for d in dims)


def function(
    name: str, domain: str, inputs: Sequence[str], outputs: Sequence[str], nodes: Sequence[bytes]
) -> bytes:
    out = _str(1, name) + b"".join(_str(4, x) for x in inputs) + b"".join(_str(5, x) for x in outputs)
    out += b"".join(_len(7, n) for n in nodes)
    return out + _len(9, _str(1, "") + _int(2, 17)) + _str(10, domain)


def model(graph_bytes: bytes, functions: Sequence[bytes] = (), extra_domains: Sequence[str] = ()) -> bytes:
    """A ModelProto: IR version 8, opset 17 (plus version-1 opsets for `extra_domains`)."""
    opsets = _len(8, _str(1, "") + _int(2, 17)) + b"".join(
        _len(8, _str(1, d) + _int(2, 1)) for d in extra_domains
    )
    out = _int(1, 8) + _str(2, "edgepack-runtime-tests") + _len(7, graph_bytes) + opsets
    return out + b"".join(_len(25, f) for f in functions)


def classifier_graph(
    *,
    vocab_rows: int = 160,
    positions: int = 32,
    hidden: int = 8,
    num_labels: int = 5,
    token_types: bool = True,
    input_type: int = INT64,
    static_labels: bool = True,
    seed: int = 0,
    external_bias: str | None = None,
    dynamic_quant: bool = False,
    score_output: str | None = None,
) -> bytes:
    """A tiny text classifier with the bundle's interface: masked mean of word + position (+ type) embeddings,
    tanh, linear head. Padding never changes a row's answer, and a token id >= vocab_rows or a sequence longer
    than `positions` makes ONNX Runtime fail (Gather out of range), as a real transformer's tables would.
    dynamic_quant=True makes the head dynamic INT8 as onnxruntime's quantize_dynamic does
    (DynamicQuantizeLinear, one scale for the whole batch; MatMulInteger): then a row's answer depends on the
    rest of its batch. score_output="oos_score" adds a second output, one float per row: the sum of the
    row's logits (a stand-in for a bundle's out-of-scope score)."""
    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> np.ndarray:
        return rng.normal(0.0, 1.0, size=shape).astype(np.float32)

    def scalar(value: int) -> np.ndarray:
        return np.array(value, dtype=np.int64)

    inits = [
        tensor("word_emb", weights(vocab_rows, hidden)),
        tensor("pos_emb", 0.3 * weights(positions, hidden)),
        tensor("head_w", weights(hidden, num_labels)),
        tensor("zero", scalar(0)),
        tensor("one", scalar(1)),
        tensor("axis_seq", np.array([1], dtype=np.int64)),
        tensor("axis_last", np.array([2], dtype=np.int64)),
        tensor("eps", np.array(1e-6, dtype=np.float32)),
    ]
    inits.append(
        tensor("head_b", external=external_bias, dims=(num_labels,))
        if external_bias
        else tensor("head_b", weights(num_labels))
    )
    nodes = [
        node("Gather", ["word_emb", "input_ids"], ["words"]),
        node("Shape", ["input_ids"], ["ids_shape"]),
        node("Gather", ["ids_shape", "one"], ["seq_len"]),
        node("Range", ["zero", "seq_len", "one"], ["position_ids"]),
        node("Gather", ["pos_emb", "position_ids"], ["pos"]),
        node("Add", ["words", "pos"], ["emb0"]),
    ]
    names = ["input_ids", "attention_mask"]
    emb = "emb0"
    if token_types:
        inits.append(tensor("type_emb", 0.3 * weights(2, hidden)))
        nodes += [
            node("Gather", ["type_emb", "token_type_ids"], ["types"]),
            node("Add", ["emb0", "types"], ["emb1"]),
        ]
        names.append("token_type_ids")
        emb = "emb1"
    nodes += [
        node("Cast", ["attention_mask"], ["mask_f"], attrs=[attribute("to", i=FLOAT)]),
        node("Unsqueeze", ["mask_f", "axis_last"], ["mask3"]),
        node("Mul", [emb, "mask3"], ["masked"]),
        node("ReduceSum", ["masked", "axis_seq"], ["summed"], attrs=[attribute("keepdims", i=0)]),
        node("ReduceSum", ["mask3", "axis_seq"], ["count"], attrs=[attribute("keepdims", i=0)]),
        node("Max", ["count", "eps"], ["count1"]),
        node("Div", ["summed", "count1"], ["pooled"]),
        node("Tanh", ["pooled"], ["hidden"]),
        node("MatMul", ["hidden", "head_w"], ["scores"]),
        node("Add", ["scores", "head_b"], ["logits"]),
    ]
    if dynamic_quant:
        head = weights(hidden, num_labels)
        scale = np.float32(np.abs(head).max() / 127)
        inits += [
            tensor("head_wq", np.round(head / scale).astype(np.int8)),
            tensor("head_wq_zero", np.array(0, dtype=np.int8)),
            tensor("head_wq_scale", np.array(scale, dtype=np.float32)),
        ]
        nodes[-2:-1] = [
            node("DynamicQuantizeLinear", ["hidden"], ["hidden_q", "hidden_scale", "hidden_zero"]),
            node("MatMulInteger", ["hidden_q", "head_wq", "hidden_zero", "head_wq_zero"], ["scores_i"]),
            node("Cast", ["scores_i"], ["scores_f"], attrs=[attribute("to", i=FLOAT)]),
            node("Mul", ["hidden_scale", "head_wq_scale"], ["scores_scale"]),
            node("Mul", ["scores_f", "scores_scale"], ["scores"]),
        ]
    inputs = [value_info(n, input_type, ["batch", "sequence"]) for n in names]
    outputs = [value_info("logits", FLOAT, ["batch", num_labels if static_labels else "labels"])]
    if score_output:
        inits.append(tensor("axis_labels", np.array([1], dtype=np.int64)))
        nodes.append(
            node("ReduceSum", ["logits", "axis_labels"], [score_output], attrs=[attribute("keepdims", i=0)])
        )
        outputs.append(value_info(score_output, FLOAT, ["batch"]))
    return model(graph("tiny_classifier", nodes, inits, inputs, outputs))


def external_data_graph(where: str, location: str) -> bytes:
    """A small graph with one tensor kept in an external file at `location`, placed at `where`: 'initializer',
    'sparse_initializer', 'constant' (a Constant node's attribute), 'subgraph' (inside an If branch),
    'function' (inside a model-local function) or 'location_flag' (data_location=EXTERNAL, no entries)."""
    out = [value_info("y", FLOAT, [4])]
    cond_in = [value_info("cond", 9, [])]  # 9 = BOOL

    def const(name: str) -> bytes:
        return node(
            "Constant",
            [],
            [name],
            attrs=[attribute("value", t=tensor(f"{name}_value", external=location, dims=(4,)))],
        )

    if where == "initializer":
        return model(
            graph("g", [node("Identity", ["w"], ["y"])], [tensor("w", external=location, dims=(4,))], [], out)
        )
    if where == "location_flag":
        flagged = tensor("w", dims=(4,)) + _int(14, 1)
        return model(graph("g", [node("Identity", ["w"], ["y"])], [flagged], [], out))
    if where == "sparse_initializer":
        values = tensor("w_values", external=location, dims=(2,))
        indices = tensor("w_indices", np.array([0, 3], dtype=np.int64))
        sparse = sparse_tensor(values, indices, (4,))
        return model(graph("g", [node("Identity", ["w"], ["y"])], [], [], out, sparse_initializers=[sparse]))
    if where == "constant":
        return model(graph("g", [const("y")], [], [], out))
    if where == "subgraph":
        then = graph("then", [const("t")], [], [], [value_info("t", FLOAT, [4])])
        other = graph(
            "else",
            [
                node(
                    "Constant",
                    [],
                    ["e"],
                    attrs=[attribute("value", t=tensor("e_value", np.zeros(4, np.float32)))],
                )
            ],
            [],
            [],
            [value_info("e", FLOAT, [4])],
        )
        branch = node(
            "If", ["cond"], ["y"], attrs=[attribute("else_branch", g=other), attribute("then_branch", g=then)]
        )
        return model(graph("g", [branch], [], cond_in, out))
    if where == "function":
        body = function("Leak", "local", [], ["r"], [const("r")])
        call = node("Leak", [], ["y"]) + _str(7, "local")
        return model(graph("g", [call], [], [], out), functions=[body], extra_domains=["local"])
    raise ValueError(f"unknown place {where!r}")


EXTERNAL_PLACES = ("initializer", "location_flag", "sparse_initializer", "constant", "subgraph", "function")
