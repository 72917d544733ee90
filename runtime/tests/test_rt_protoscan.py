"""External data is found wherever a graph can hold a tensor, and refused before ONNX Runtime sees it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepack_runtime import BundleError, Classifier
from edgepack_runtime.cli import main
from edgepack_runtime.protoscan import ProtoError, scan_model

from . import tiny_onnx
from .bundle_kit import MakeBundle

# Float32 values whose bytes spell a marker: if ONNX Runtime read this file, the marker could surface.
SECRET = np.frombuffer(b"TOPSECRETvalues!" + bytes(4), dtype=np.float32)


@pytest.mark.parametrize("where", tiny_onnx.EXTERNAL_PLACES)
def test_scan_finds_external_data_everywhere(where: str) -> None:
    scan = scan_model(tiny_onnx.external_data_graph(where, "../secret.bin"))
    assert scan.has_graph
    assert len(scan.external) == 1
    ref = scan.external[0]
    assert ref.location == (None if where == "location_flag" else "../secret.bin")


def test_scan_says_where() -> None:
    ref = scan_model(tiny_onnx.external_data_graph("subgraph", "x.bin")).external[0]
    assert ref.tensor == "t_value"
    assert (
        "node 'If_y'" in ref.where and "attribute 'then_branch'" in ref.where and "graph 'then'" in ref.where
    )
    ref = scan_model(tiny_onnx.external_data_graph("function", "x.bin")).external[0]
    assert "function 'Leak'" in ref.where


def test_clean_graph_has_no_external_data_and_counts_operators() -> None:
    scan = scan_model(tiny_onnx.classifier_graph())
    assert scan.has_graph and not scan.external
    assert scan.op_types["Gather"] == 4 and scan.op_types["ReduceSum"] == 2 and scan.op_types["MatMul"] == 1


def test_deeply_nested_subgraphs_do_not_exhaust_the_stack() -> None:
    body = tiny_onnx.graph("leaf", [], [tiny_onnx.tensor("deep", external="x.bin", dims=(1,))], [], [])
    for level in range(3000):
        attr = tiny_onnx.attribute("then_branch", g=body)
        body = tiny_onnx.graph(f"g{level}", [tiny_onnx.node("If", ["c"], ["y"], attrs=[attr])], [], [], [])
    scan = scan_model(tiny_onnx.model(body))
    assert [r.tensor for r in scan.external] == ["deep"]


@pytest.mark.parametrize(
    "data",
    [
        b"\x3a\x05\x0a",  # graph field claims 5 bytes, 1 follows
        b"\x08\xff\xff",  # varint never ends
        b"\x0b\x00",  # wire type 3 (group)
        b"\x00\x01",  # field number 0
        b"\x08" + b"\xff" * 11,  # varint longer than 64 bits
    ],
)
def test_malformed_protobuf_raises_proto_error(data: bytes) -> None:
    with pytest.raises(ProtoError):
        scan_model(data)


def test_model_without_graph() -> None:
    assert not scan_model(b"\x08\x08").has_graph


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_scan_of_random_bytes_returns_or_raises_proto_error(data: bytes) -> None:
    with contextlib.suppress(ProtoError):
        scan_model(data)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_scan_of_corrupted_graph_returns_or_raises_proto_error(data: st.DataObject) -> None:
    model = bytearray(tiny_onnx.external_data_graph("subgraph", "x.bin"))
    for _ in range(data.draw(st.integers(1, 4))):
        model[data.draw(st.integers(0, len(model) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ProtoError):
        scan_model(bytes(model))


# -- through Classifier.load and the CLI: refused, and the outside file never reaches the output -----------


@pytest.fixture
def secret_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory beside a secret file (ORT resolves in-memory models' external data from there)."""
    (tmp_path / "secret.bin").write_bytes(SECRET.tobytes())
    work = tmp_path / "work"
    work.mkdir()
    (work / "secret.bin").write_bytes(SECRET.tobytes())
    (work / "link.bin").symlink_to(tmp_path / "secret.bin")
    monkeypatch.chdir(work)
    return tmp_path


@pytest.mark.parametrize("location", ["../secret.bin", "ABSOLUTE", "link.bin", "secret.bin"])
def test_external_data_bundle_is_refused_without_leaking(
    make_bundle: MakeBundle, secret_dir: Path, location: str
) -> None:
    location = str(secret_dir / "secret.bin") if location == "ABSOLUTE" else location
    path = make_bundle(graph={"num_labels": 5, "external_bias": location})
    with pytest.raises(BundleError) as info:
        Classifier.load(path)
    assert info.value.file == "model.onnx"
    message = str(info.value)
    assert "head_b" in message and "external" in message and repr(location) in message
    assert "TOPSECRET" not in message

    result = CliRunner().invoke(main, ["classify", str(path), "hello"])
    assert result.exit_code == 1
    assert (
        "external" in result.output and "TOPSECRET" not in result.output and "Traceback" not in result.output
    )


@pytest.mark.parametrize("where", tiny_onnx.EXTERNAL_PLACES)
def test_external_data_anywhere_in_a_bundle_is_refused(make_bundle: MakeBundle, where: str) -> None:
    path = make_bundle(model=tiny_onnx.external_data_graph(where, "../secret.bin"))
    with pytest.raises(BundleError, match=r"model\.onnx: .*external data is not allowed"):
        Classifier.load(path)


# -- graphs written by the onnx package (build environment only) -------------------------------------------


def _onnx_graphs(tmp_path: Path) -> dict[str, bytes]:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import convert_model_to_external_data, set_external_data

    def external(name: str, values: np.ndarray) -> TensorProto:
        tensor = numpy_helper.from_array(values, name)
        set_external_data(tensor, location="../secret.bin")
        tensor.ClearField("raw_data")
        return tensor

    out_y = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])]
    vec = np.arange(4, dtype=np.float32)
    graphs: dict[str, bytes] = {}

    # A real external-data export: onnx writes the weights to a side file.
    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    big = helper.make_model(
        helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [], out_y, [weight])
    )
    convert_model_to_external_data(
        big, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0
    )
    onnx.save_model(big, str(tmp_path / "exported.onnx"))
    graphs["saved_with_external_data"] = (tmp_path / "exported.onnx").read_bytes()

    const = helper.make_node("Constant", [], ["y"], value=external("c", vec))
    graphs["constant"] = helper.make_model(helper.make_graph([const], "g", [], out_y)).SerializeToString()

    then = helper.make_graph(
        [helper.make_node("Constant", [], ["t"], value=external("t", vec))],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [4])],
    )
    other = helper.make_graph(
        [helper.make_node("Constant", [], ["e"], value=numpy_helper.from_array(vec, "e"))],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [4])],
    )
    branch = helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)
    cond = [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])]
    graphs["subgraph"] = helper.make_model(helper.make_graph([branch], "g", cond, out_y)).SerializeToString()

    sparse = helper.make_sparse_tensor(
        external("v", vec[:2]), numpy_helper.from_array(np.array([0, 3]), "i"), [4]
    )
    graph = helper.make_graph([helper.make_node("Identity", ["s"], ["y"])], "g", [], out_y)
    sparse.values.name = "s"
    graph.sparse_initializer.append(sparse)
    graphs["sparse_initializer"] = helper.make_model(graph).SerializeToString()

    inner = helper.make_node("Constant", [], ["r"], value=external("r", vec))
    body = helper.make_function("local", "Leak", [], ["r"], [inner], [helper.make_opsetid("", 17)])
    call = helper.make_node("Leak", [], ["y"], domain="local")
    graphs["function"] = helper.make_model(
        helper.make_graph([call], "g", [], out_y),
        functions=[body],
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
    ).SerializeToString()
    return graphs


def test_onnx_made_graphs_with_external_data_are_found(tmp_path: Path) -> None:
    for where, data in _onnx_graphs(tmp_path).items():
        scan = scan_model(data)
        assert scan.has_graph, where
        assert len(scan.external) >= 1, where


def test_onnx_made_export_with_external_data_is_refused(make_bundle: MakeBundle, tmp_path: Path) -> None:
    data = _onnx_graphs(tmp_path)["saved_with_external_data"]
    assert os.path.exists(tmp_path / "weights.bin")
    with pytest.raises(BundleError, match=r"tensor 'w' .*\(location 'weights.bin'\)"):
        Classifier.load(make_bundle(model=data))


def test_scan_agrees_with_onnx_on_a_clean_graph() -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load_from_string(tiny_onnx.classifier_graph())
    scan = scan_model(model.SerializeToString())
    assert scan.has_graph and not scan.external and sum(scan.op_types.values()) == len(model.graph.node)
