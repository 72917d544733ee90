"""Batches of a dynamic-INT8 graph that give every text its own answer: per-text activation quantization.

A dynamic INT8 graph (onnxruntime's `quantize_dynamic`) quantizes activations with DynamicQuantizeLinear: one
scale and zero point over the whole tensor. In a batch, a text's scale then depends on its neighbours and on
the padding, and so does its answer (CLINC's test split at batch 32: 1.6% of the labels change). `rewrite`
turns such a graph, at load time and without the onnx package, into one where each text (each row of the
batch) is quantized exactly as it would be alone:

- DynamicQuantizeLinear(x) becomes the same arithmetic per row: min and max over that text's real tokens (the
  padding masked out), widened to include 0; scale = (max - min) / 255, or 1 when max == min; zero point =
  round(clip(-min / scale, 0, 255)); then QuantizeLinear along the batch axis. These are the float operations
  ONNX Runtime's kernel does, so a text gets the same bytes alone or in any batch.
- MatMulInteger accepts one zero point for its A input only, so each row's zero point comes out of the integer
  product exactly, in int32: (A - z) W = A W - z * colsum(W). colsum(W) is a constant subgraph, folded by
  ONNX Runtime when the session starts.
- QAttention accepts one input scale only: it becomes that same integer product, its scale, and
  com.microsoft:MultiHeadAttention (the attention QAttention runs after its projection) with the same mask.

Only graph shapes whose rows provably stay apart are accepted: every tensor on the way from the inputs to a
DynamicQuantizeLinear must come from a short list of per-token or per-text operators (the BERT graphs
edgepack builds). Anything else raises `NotRewritable` naming why; the caller then runs texts one at a time.
Classifier also checks the rewritten graph against the original on probe batches before trusting it.

Field numbers are those of onnx/onnx.proto (ModelProto graph=7, opset_import=8; GraphProto node=1,
initializer=5, input=11, value_info=13; NodeProto input=1, output=2, name=3, op_type=4, attribute=5,
domain=7; AttributeProto name=1, f=2, i=3, t=5, ints=8, type=20; TensorProto dims=1, data_type=2, name=8,
raw_data=9; OperatorSetIdProto domain=1, version=2; ValueInfoProto name=1).
"""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edgepack_runtime.protoscan import ProtoError, _fields

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_FLOAT, _UINT8, _INT32, _INT64 = 1, 2, 6, 7  # TensorProto.DataType
_ATTR_FLOAT, _ATTR_INT, _ATTR_INTS = 1, 2, 7  # AttributeProto.AttributeType
_MS = "com.microsoft"
_PREFIX = "edgepack/per_text/"
MIN_OPSET = 13  # QuantizeLinear along an axis, ReduceSum / Unsqueeze / Split taking inputs as they do here

# Operators whose outputs keep each text in its own row (and each token in its own position) of their
# inputs: elementwise ones, per-token normalisations and activations, transformer blocks that mask padding.
_ELEMENTWISE = frozenset(
    {
        "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Cast", "Tanh", "Relu", "Erf", "Sqrt",
        "Neg", "Identity", "Sigmoid", "Clip", "Softmax", "LayerNormalization", "Gelu", "FastGelu",
        "BiasGelu", "SkipLayerNormalization", "SimplifiedLayerNormalization",
    }
)  # fmt: skip
_SEQ_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class NotRewritable(ValueError):
    """The graph is not one whose batches can be made per-text here; the message says why."""


# -- protobuf reading ----------------------------------------------------------------------------------------


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _packed_or_single(buf: bytes, wire: int, a: int, b: int) -> list[int]:
    if wire == _VARINT:
        return [_signed(a)]
    values, pos = [], a
    while pos < b:
        value = shift = 0
        while True:
            byte = buf[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        values.append(_signed(value))
    return values


@dataclass
class _Attr:
    raw: bytes  # the AttributeProto, re-emitted as is
    i: int | None = None
    f: float | None = None
    ints: list[int] = field(default_factory=list)
    tensor_rank: int | None = None


@dataclass
class _Node:
    raw: bytes
    op: str
    domain: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, _Attr]

    @property
    def kind(self) -> str:
        return f"{self.domain}:{self.op}" if self.domain not in ("", "ai.onnx") else self.op


def _text(buf: bytes, a: int, b: int) -> str:
    return buf[a:b].decode("utf-8", errors="replace")


def _tensor_rank(buf: bytes, a: int, b: int) -> int:
    return sum(len(_packed_or_single(buf, w, x, y)) for n, w, x, y in _fields(buf, a, b) if n == 1)


def _attribute(buf: bytes, a: int, b: int) -> tuple[str, _Attr]:
    name, attr = "", _Attr(buf[a:b])
    for number, wire, x, y in _fields(buf, a, b):
        if number == 1 and wire == _LEN:
            name = _text(buf, x, y)
        elif number == 2 and wire == _I32:
            attr.f = struct.unpack("<f", buf[x:y])[0]
        elif number == 3 and wire == _VARINT:
            attr.i = _signed(x)
        elif number == 5 and wire == _LEN:
            attr.tensor_rank = _tensor_rank(buf, x, y)
        elif number == 8:
            attr.ints += _packed_or_single(buf, wire, x, y)
    return name, attr


def _node(buf: bytes, a: int, b: int) -> _Node:
    node = _Node(buf[a:b], "", "", [], [], {})
    for number, wire, x, y in _fields(buf, a, b):
        if wire != _LEN:
            continue
        if number == 1:
            node.inputs.append(_text(buf, x, y))
        elif number == 2:
            node.outputs.append(_text(buf, x, y))
        elif number == 4:
            node.op = _text(buf, x, y)
        elif number == 7:
            node.domain = _text(buf, x, y)
        elif number == 5:
            name, attr = _attribute(buf, x, y)
            node.attrs[name] = attr
    return node


# -- protobuf writing ----------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _len(number: int, payload: bytes) -> bytes:
    return _key(number, _LEN) + _varint(len(payload)) + payload


def _str(number: int, text: str) -> bytes:
    return _len(number, text.encode("utf-8"))


def _int(number: int, value: int) -> bytes:
    return _key(number, _VARINT) + _varint(value)


def _copy(buf: bytes, number: int, wire: int, a: int, b: int) -> bytes:
    """Re-encode one field read by `_fields`."""
    if wire == _VARINT:
        return _int(number, a)
    if wire == _LEN:
        return _len(number, buf[a:b])
    return _key(number, wire) + buf[a:b]


def _int_attr(name: str, value: int) -> bytes:
    return _str(1, name) + _int(3, value) + _int(20, _ATTR_INT)


def _ints_attr(name: str, values: Sequence[int]) -> bytes:
    return _str(1, name) + b"".join(_int(8, v) for v in values) + _int(20, _ATTR_INTS)


def _tensor(name: str, array: np.ndarray) -> bytes:
    kind = {np.float32: _FLOAT, np.int64: _INT64}[array.dtype.type]
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return b"".join(_int(1, d) for d in array.shape) + _int(2, kind) + _str(8, name) + _len(9, data)


# -- the graph as read ---------------------------------------------------------------------------------------


@dataclass
class _Graph:
    nodes: list[_Node]
    kept: list[bytes]  # every GraphProto field but nodes and value_info, re-encoded
    constants: dict[str, int]  # initializer / Constant output name -> rank
    inputs: list[str]
    opset: int
    ms_opset: bool


def _read(model: bytes) -> tuple[list[bytes], int, _Graph]:
    """Model fields before the graph, the graph's position among them, and the graph."""
    fields: list[bytes] = []
    graph: tuple[int, int] | None = None
    opset, ms_opset = 0, False
    for number, wire, a, b in _fields(model, 0, len(model)):
        if number == 7 and wire == _LEN:
            graph = (a, b)
            fields.append(b"")
            continue
        if number == 8 and wire == _LEN:
            domain, version = "", 0
            for n, w, x, y in _fields(model, a, b):
                if n == 1 and w == _LEN:
                    domain = _text(model, x, y)
                elif n == 2 and w == _VARINT:
                    version = x
            if domain in ("", "ai.onnx"):
                opset = version
            ms_opset = ms_opset or domain == _MS
        fields.append(_copy(model, number, wire, a, b))
    if graph is None:
        raise NotRewritable("the model has no graph")
    nodes, kept, constants, inputs = [], [], {}, []
    for number, wire, a, b in _fields(model, *graph):
        if number == 1 and wire == _LEN:
            nodes.append(_node(model, a, b))
            continue
        if number == 13:  # value_info: shape hints, some of which per-text tensors no longer match
            continue
        if number == 5 and wire == _LEN:
            name = next((_text(model, x, y) for n, w, x, y in _fields(model, a, b) if n == 8), "")
            constants[name] = _tensor_rank(model, a, b)
        elif number == 11 and wire == _LEN:
            inputs.append(next((_text(model, x, y) for n, w, x, y in _fields(model, a, b) if n == 1), ""))
        kept.append(_copy(model, number, wire, a, b))
    for node in nodes:
        value = node.attrs.get("value")
        if node.op == "Constant" and value is not None and value.tensor_rank is not None:
            constants[node.outputs[0]] = value.tensor_rank
    index = next(i for i, f in enumerate(fields) if f == b"")
    return fields, index, _Graph(nodes, kept, constants, inputs, opset, ms_opset)


# -- what each tensor holds ----------------------------------------------------------------------------------
# "BS": [batch, sequence] (the inputs); "BSH": one vector per token; "BH": one vector per text; "B": one value
# per text (a mask index); ("const", rank); None: unknown (not provably per-text).

_Kind = str | tuple[str, int] | None
_RANK = {"BS": 2, "BSH": 3, "BH": 2, "B": 1}


def _combine(kinds: list[_Kind]) -> _Kind:
    """The kind of an elementwise result: its row-holding inputs must agree; constants of rank <= 1 broadcast
    along the last axis only, so they never mix rows."""
    rows = {k for k in kinds if not isinstance(k, tuple)}
    if not rows and kinds:  # constants only (or the scalar scale of a DynamicQuantizeLinear): a constant
        return ("const", max(k[1] for k in kinds if isinstance(k, tuple)))
    if None in rows or len(rows) != 1:
        return None
    kind = rows.pop()
    if any(isinstance(k, tuple) and k[1] > 1 for k in kinds):
        return None
    return kind


def _kinds(graph: _Graph) -> dict[str, _Kind]:
    kinds: dict[str, _Kind] = {name: ("const", rank) for name, rank in graph.constants.items()}
    kinds.update({name: "BS" for name in graph.inputs if name in _SEQ_INPUTS})
    for node in graph.nodes:
        ins = [kinds.get(name) for name in node.inputs if name]
        out: list[_Kind] = [None] * len(node.outputs)
        op = node.op
        if op == "Constant":
            continue
        if op in ("EmbedLayerNormalization", "QEmbedLayerNormalization") and node.domain == _MS:
            embedding: list[_Kind] = ["BSH", "B", "BSH"]
            out = embedding[: len(node.outputs)]
        elif op in _ELEMENTWISE:
            out[0] = _combine(ins)
            if op == "SkipLayerNormalization":
                out[1:] = [None] * (len(out) - 1)
        elif op == "DynamicQuantizeLinear":
            out = [kinds.get(node.inputs[0]), ("const", 0), ("const", 0)]
        elif op in ("MatMul", "MatMulInteger") and len(ins) >= 2 and ins[1] == ("const", 2):
            out[0] = ins[0] if ins[0] in ("BSH", "BH") else None
        elif op == "QAttention" and node.domain == _MS:
            out[0] = "BSH" if ins and ins[0] == "BSH" else None
        elif op == "Gather" and len(ins) == 2 and ins[0] == "BSH" and ins[1] == ("const", 0):
            axis = node.attrs.get("axis")
            out[0] = "BH" if axis is not None and axis.i == 1 else None
        for name, kind in zip(node.outputs, out, strict=False):
            if name:
                kinds[name] = kind
    return kinds


# -- checking the pattern ------------------------------------------------------------------------------------


@dataclass
class _Site:
    """One DynamicQuantizeLinear and the operators reading its outputs."""

    node: _Node
    kind: str
    matmuls: list[_Node] = field(default_factory=list)
    attentions: list[_Node] = field(default_factory=list)


def _consumers(nodes: list[_Node]) -> dict[str, list[tuple[_Node, int]]]:
    out: dict[str, list[tuple[_Node, int]]] = defaultdict(list)
    for node in nodes:
        for position, name in enumerate(node.inputs):
            if name:
                out[name].append((node, position))
    return out


def _optional(node: _Node, position: int) -> str:
    return node.inputs[position] if len(node.inputs) > position else ""


def _check_attention(node: _Node, site: _Site, graph: _Graph, producers: dict[str, _Node]) -> None:
    q, s, z = site.node.outputs
    weight, bias, w_scale, mask = (_optional(node, i) for i in (1, 2, 4, 5))
    w_zero, past = _optional(node, 7), _optional(node, 8)
    if (_optional(node, 3), _optional(node, 6)) != (s, z):
        raise NotRewritable(f"QAttention reading '{q}' does not take its scale and zero point")
    if graph.constants.get(weight) != 2 or graph.constants.get(bias) != 1:
        raise NotRewritable("a QAttention's weight or bias is not a constant matrix / vector")
    if graph.constants.get(w_scale, 9) > 1 or (w_zero and graph.constants.get(w_zero, 9) > 1):
        raise NotRewritable("a QAttention's weight scale or zero point is not per column")
    source = producers.get(mask)
    if source is None or source.op not in ("EmbedLayerNormalization", "QEmbedLayerNormalization"):
        raise NotRewritable("a QAttention's mask index does not come from the embedding layer")
    if source.outputs.index(mask) != 1 or past or len(node.inputs) > 9:
        raise NotRewritable("a QAttention uses a past state or an unusual mask")
    extra = set(node.attrs) - {"num_heads", "mask_filter_value", "scale", "unidirectional"}
    unidirectional = node.attrs.get("unidirectional")
    if extra or (unidirectional is not None and unidirectional.i):
        raise NotRewritable(f"a QAttention has attributes this rewrite does not carry over: {sorted(extra)}")
    if len([o for o in node.outputs if o]) != 1:
        raise NotRewritable("a QAttention has a present-state output")


def _sites(graph: _Graph, kinds: dict[str, _Kind], outputs: set[str]) -> list[_Site]:
    consumers = _consumers(graph.nodes)
    producers = {name: node for node in graph.nodes for name in node.outputs if name}
    sites = []
    for node in graph.nodes:
        if node.op != "DynamicQuantizeLinear" or node.domain not in ("", "ai.onnx"):
            if "DynamicQuantize" in node.op:
                raise NotRewritable(f"{node.kind} quantizes a whole batch with one scale")
            continue
        kind = kinds.get(node.inputs[0])
        if kind not in ("BSH", "BH"):
            raise NotRewritable(
                f"cannot prove that '{node.inputs[0]}' (quantized by DynamicQuantizeLinear) keeps texts apart"
            )
        if len(node.outputs) != 3 or outputs & set(node.outputs):
            raise NotRewritable("a DynamicQuantizeLinear output is a graph output")
        site = _Site(node, str(kind))
        q, s, z = node.outputs
        for user, position in consumers[q]:
            if user.op == "MatMulInteger" and position == 0 and _optional(user, 2) == z:
                weight, w_zero = user.inputs[1], _optional(user, 3)
                if graph.constants.get(weight) != 2 or (w_zero and graph.constants.get(w_zero, 9) > 1):
                    raise NotRewritable("a MatMulInteger's weight is not a constant matrix")
                site.matmuls.append(user)
            elif user.op == "QAttention" and user.domain == _MS and position == 0:
                _check_attention(user, site, graph, producers)
                site.attentions.append(user)
            else:
                raise NotRewritable(f"{user.kind} reads a quantized activation")
        readers = {id(n) for n in site.matmuls + site.attentions}
        if any(id(user) not in readers for user, _ in consumers[z]):
            raise NotRewritable("a zero point is read by an operator other than the matrix products")
        matmul_outputs = {m.outputs[0] for m in site.matmuls}
        for user, position in consumers[s]:
            if id(user) in readers and user.op == "QAttention" and position == 3:
                continue
            other = user.inputs[1 - position] if user.op == "Mul" and len(user.inputs) == 2 else ""
            if not other or graph.constants.get(other, 9) > 1:
                raise NotRewritable(f"{user.kind} reads an activation scale")
            # The scale product must only rescale these products' integer results: Mul(Cast(product), it).
            for final, place in consumers[user.outputs[0]]:
                cast = producers.get(final.inputs[1 - place]) if final.op == "Mul" else None
                if cast is None or cast.op != "Cast" or cast.inputs[0] not in matmul_outputs:
                    raise NotRewritable("an activation scale is used beyond rescaling its matrix product")
        sites.append(site)
    if not sites:
        raise NotRewritable("the graph has no DynamicQuantizeLinear")
    return sites


# -- writing the per-text graph ------------------------------------------------------------------------------


class _Writer:
    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[bytes] = []
        self.inits: list[bytes] = []
        self._count = 0
        self._consts: dict[tuple[str, bytes], str] = {}

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{_PREFIX}{hint}_{self._count}"

    def const(self, array: np.ndarray) -> str:
        key = (str(array.dtype), array.tobytes() + str(array.shape).encode())
        if key not in self._consts:
            name = self.name("const")
            self.inits.append(_len(5, _tensor(name, array)))
            self._consts[key] = name
        return self._consts[key]

    def node(
        self,
        op: str,
        inputs: Sequence[str],
        outputs: Sequence[str] | int = 1,
        domain: str = "",
        attrs: Sequence[bytes] = (),
    ) -> list[str]:
        names = [self.name(op.lower()) for _ in range(outputs)] if isinstance(outputs, int) else list(outputs)
        body = b"".join(_str(1, i) for i in inputs) + b"".join(_str(2, o) for o in names)
        body += _str(3, self.name(op)) + _str(4, op) + b"".join(_len(5, a) for a in attrs)
        if domain:
            body += _str(7, domain)
        self.nodes.append(_len(1, body))
        return names

    def one(self, op: str, inputs: Sequence[str], out: str | None = None, attrs: Sequence[bytes] = ()) -> str:
        return self.node(op, inputs, [out] if out else 1, attrs=attrs)[0]

    def reduce(self, op: str, x: str, axes: Sequence[int]) -> str:
        if self.opset >= 18:  # axes became an input of ReduceMax / ReduceMin in opset 18
            return self.one(op, [x, self.const(np.array(axes, np.int64))], attrs=[_int_attr("keepdims", 1)])
        return self.one(op, [x], attrs=[_ints_attr("axes", axes), _int_attr("keepdims", 1)])


def _quantize_per_text(w: _Writer, site: _Site, mask3: str) -> None:
    """The outputs of `site`'s DynamicQuantizeLinear, computed per row, under the same names."""
    x = site.node.inputs[0]
    q, s, z = site.node.outputs
    zero, one, top = (w.const(np.array(v, np.float32)) for v in (0.0, 1.0, 255.0))
    if site.kind == "BSH":  # padding tokens become 0, which the range includes anyway
        masked = w.one("Mul", [x, mask3])
        high, low = w.reduce("ReduceMax", masked, [1, 2]), w.reduce("ReduceMin", masked, [1, 2])
    else:
        high, low = w.reduce("ReduceMax", x, [1]), w.reduce("ReduceMin", x, [1])
    high, low = w.one("Max", [high, zero]), w.one("Min", [low, zero])
    scale = w.one("Div", [w.one("Sub", [high, low]), top])
    w.one("Where", [w.one("Equal", [high, low]), one, scale], out=s)
    point = w.one("Clip", [w.one("Neg", [w.one("Div", [low, s])]), zero, top])
    w.one("Cast", [w.one("Round", [point])], out=z, attrs=[_int_attr("to", _UINT8)])
    flat = w.const(np.array([-1], np.int64))
    rows = [w.one("Reshape", [s, flat]), w.one("Reshape", [z, flat])]
    w.one("QuantizeLinear", [x, *rows], out=q, attrs=[_int_attr("axis", 0)])


def _integer_product(w: _Writer, x_q: str, weight: str, w_zero: str, zero_int: str, out: str | None) -> str:
    """(x_q - z) (W - w_zero) in int32 with z per row: x_q (W - w_zero) - z * colsum(W - w_zero)."""
    raw = w.one("MatMulInteger", [x_q, weight, "", w_zero] if w_zero else [x_q, weight])
    columns = w.one("Cast", [weight], attrs=[_int_attr("to", _INT32)])
    if w_zero:
        columns = w.one("Sub", [columns, w.one("Cast", [w_zero], attrs=[_int_attr("to", _INT32)])])
    colsum = w.one("ReduceSum", [columns, w.const(np.array([0], np.int64))], attrs=[_int_attr("keepdims", 0)])
    return w.one("Sub", [raw, w.one("Mul", [zero_int, colsum])], out=out)


def _attention(w: _Writer, node: _Node, zero_int: str) -> None:
    x_q, weight, bias, x_scale, w_scale, mask = node.inputs[:6]
    w_zero = _optional(node, 7)
    product = _integer_product(w, x_q, weight, w_zero, zero_int, None)
    scale = w.one("Mul", [x_scale, w_scale])
    qkv = w.one("Mul", [w.one("Cast", [product], attrs=[_int_attr("to", _FLOAT)]), scale])
    split = [_int_attr("axis", 2)] + ([_int_attr("num_outputs", 3)] if w.opset >= 18 else [])
    query, key, value = w.node("Split", [qkv], 3, attrs=split)
    carried = [node.attrs[a].raw for a in ("num_heads", "mask_filter_value", "scale") if a in node.attrs]
    outputs = [o for o in node.outputs if o]
    w.node("MultiHeadAttention", [query, key, value, bias, mask], outputs, domain=_MS, attrs=carried)


def rewrite(model: bytes) -> bytes:
    """The per-text version of a dynamic-INT8 graph (serialized ModelProto in, out); NotRewritable when the
    graph is not one this module can prove per-text."""
    try:
        fields, index, graph = _read(model)
    except ProtoError as err:
        raise NotRewritable(f"not a readable ONNX model ({err})") from None
    if graph.opset < MIN_OPSET:
        raise NotRewritable(f"opset {graph.opset} is older than {MIN_OPSET}")
    if "attention_mask" not in graph.inputs:
        raise NotRewritable("the graph has no attention_mask input")
    outputs = set()
    for chunk in graph.kept:
        for number, wire, a, b in _fields(chunk, 0, len(chunk)):
            if number == 12 and wire == _LEN:
                outputs |= {_text(chunk, x, y) for n, _, x, y in _fields(chunk, a, b) if n == 1}
    sites = _sites(graph, _kinds(graph), outputs)
    if any(site.attentions for site in sites) and not graph.ms_opset:
        raise NotRewritable("QAttention without a com.microsoft opset import")
    w = _Writer(graph.opset)
    mask = w.one("Cast", ["attention_mask"], attrs=[_int_attr("to", _FLOAT)])
    mask3 = w.one("Unsqueeze", [mask, w.const(np.array([2], np.int64))])
    by_node = {id(site.node): site for site in sites}
    replaced: dict[int, tuple[_Node, str]] = {}  # matrix products reading a site -> (node, zero point int32)
    for node in graph.nodes:
        site = by_node.get(id(node))
        if site is not None:
            _quantize_per_text(w, site, mask3)
            zero_int = w.one("Cast", [site.node.outputs[2]], attrs=[_int_attr("to", _INT32)])
            replaced.update({id(n): (n, zero_int) for n in site.matmuls + site.attentions})
        elif id(node) in replaced:
            user, zero_int = replaced[id(node)]
            if user.op == "MatMulInteger":
                weight, w_zero = user.inputs[1], _optional(user, 3)
                _integer_product(w, user.inputs[0], weight, w_zero, zero_int, user.outputs[0])
            else:
                _attention(w, user, zero_int)
        else:
            w.nodes.append(_len(1, node.raw))
    graph_bytes = b"".join(graph.kept) + b"".join(w.inits) + b"".join(w.nodes)
    fields[index] = _len(7, graph_bytes)
    return b"".join(fields)


def op_counts(model: bytes) -> dict[str, int]:
    """Operators of a serialized model, as `domain:Op` (or `Op` for the default domain): for tests."""
    _, _, graph = _read(model)
    counts: dict[str, int] = defaultdict(int)
    for node in graph.nodes:
        counts[node.kind] += 1
    return dict(counts)
