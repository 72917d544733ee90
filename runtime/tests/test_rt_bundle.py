"""A bundle is loaded only when it is exactly what the manifest says; every refusal names file and problem."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from edgepack_runtime import BundleError, Classifier
from edgepack_runtime.bundle import BUNDLE_FILES, SCHEMA, file_record, verify_bundle
from edgepack_runtime.manifest import parse_manifest

from . import tiny_onnx
from .bundle_kit import LABELS, MakeBundle, make_tokenizer, replace_file, rewrite_manifest

ALL_FILES = (*BUNDLE_FILES, "manifest.json")


def refused(path: Path, *needles: str) -> BundleError:
    """Classifier.load refuses `path` with a message holding every needle; returns the error."""
    with pytest.raises(BundleError) as info:
        Classifier.load(path)
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return info.value


def test_contract_constants_and_file_record() -> None:
    assert SCHEMA == "edgepack.bundle/1.1"
    assert BUNDLE_FILES == ("model.onnx", "tokenizer.json", "labels.json")
    record = file_record(b"abc")
    assert record == {"sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "size": 3}


def test_valid_bundle_verifies_and_loads(bundle: Path) -> None:
    manifest = verify_bundle(bundle)
    assert manifest["name"] == "tiny"
    assert manifest["files"]["model.onnx"] == file_record((bundle / "model.onnx").read_bytes())
    clf = Classifier.load(bundle)
    assert clf.labels == LABELS
    assert clf.manifest == manifest
    assert set(clf.input_names) == {"input_ids", "attention_mask", "token_type_ids"}


# -- the folder ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_FILES)
def test_missing_file(bundle: Path, name: str) -> None:
    (bundle / name).unlink()
    error = refused(bundle, name, "missing")
    assert error.file == name


def test_extra_file(bundle: Path) -> None:
    (bundle / "notes.txt").write_text("hello")
    refused(bundle, "notes.txt", "unexpected")


def test_renamed_file(bundle: Path) -> None:
    (bundle / "labels.json").rename(bundle / "labels.JSON")
    refused(bundle, "labels.JSON", "unexpected", "missing labels.json")


def test_subdirectory(bundle: Path) -> None:
    (bundle / "extra").mkdir()
    refused(bundle, "extra", "unexpected folder")


def test_bundle_file_that_is_a_directory(bundle: Path) -> None:
    (bundle / "labels.json").unlink()
    (bundle / "labels.json").mkdir()
    refused(bundle, "labels.json", "is a directory")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_fifo_is_refused_without_hanging(bundle: Path) -> None:
    (bundle / "labels.json").unlink()
    os.mkfifo(bundle / "labels.json")  # opening it for reading would block until a writer came
    refused(bundle, "labels.json", "not a regular file")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads unreadable files")
def test_unreadable_file(bundle: Path) -> None:
    (bundle / "labels.json").chmod(0)
    refused(bundle, "labels.json", "cannot be read")


def test_not_a_folder(tmp_path: Path) -> None:
    refused(tmp_path / "nope", "does not exist")
    (tmp_path / "file").write_text("x")
    refused(tmp_path / "file", "not a folder")


@pytest.mark.parametrize("name", ALL_FILES)
def test_symlink(bundle: Path, tmp_path: Path, name: str) -> None:
    outside = tmp_path / f"outside-{name}"
    shutil.move(bundle / name, outside)
    (bundle / name).symlink_to(outside)
    refused(bundle, name, "symbolic link")


@pytest.mark.parametrize("name", ALL_FILES)
def test_hard_link(bundle: Path, tmp_path: Path, name: str) -> None:
    os.link(bundle / name, tmp_path / f"twin-{name}")
    refused(bundle, name, "hard links")


@pytest.mark.parametrize(
    "bad", ["../model.onnx", "sub/model.onnx", "sub\\model.onnx", "..", "model.onnx\x00"]
)
def test_manifest_file_name_with_separator_or_dots(bundle: Path, bad: str) -> None:
    def edit(m: dict[str, Any]) -> None:
        m["files"][bad] = m["files"].pop("model.onnx")

    rewrite_manifest(bundle, edit)
    refused(bundle, "manifest.json", repr(bad), "not allowed")


def test_manifest_lists_extra_file(bundle: Path) -> None:
    rewrite_manifest(bundle, lambda m: m["files"].__setitem__("vocab.txt", file_record(b"")))
    refused(bundle, "manifest.json", "unexpected vocab.txt")


# -- contents -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUNDLE_FILES)
@pytest.mark.parametrize("where", [0, 0.5, -1])
def test_flipped_byte(bundle: Path, name: str, where: float) -> None:
    data = bytearray((bundle / name).read_bytes())
    index = int(where * (len(data) - 1)) if where >= 0 else len(data) - 1
    data[index] ^= 0x01
    (bundle / name).write_bytes(bytes(data))
    error = refused(bundle, name, "sha256 mismatch")
    assert error.file == name


def test_flipped_byte_in_manifest(bundle: Path) -> None:
    raw = bytearray((bundle / "manifest.json").read_bytes())
    raw[raw.index(b'"name"') + 1] ^= 0x20  # "name" -> "Name": a required field disappears
    (bundle / "manifest.json").write_bytes(bytes(raw))
    refused(bundle, "manifest.json", "missing required field 'name'")


@pytest.mark.parametrize("name", ALL_FILES)
def test_truncated_file(bundle: Path, name: str) -> None:
    data = (bundle / name).read_bytes()
    (bundle / name).write_bytes(data[: len(data) // 2])
    refused(bundle, name)


@pytest.mark.parametrize("name", BUNDLE_FILES)
def test_size_mismatch_names_both_sizes(bundle: Path, name: str) -> None:
    data = (bundle / name).read_bytes()
    (bundle / name).write_bytes(data[:-1])
    refused(bundle, name, f"is {len(data) - 1} bytes but the manifest says {len(data)}")


@pytest.mark.parametrize("schema", ["edgepack.bundle/2", "edgepack.bundle/0", "edgepack.bundle/10.1"])
def test_unknown_major_schema(bundle: Path, schema: str) -> None:
    rewrite_manifest(bundle, lambda m: m.__setitem__("schema", schema))
    refused(bundle, "manifest.json", "unknown major schema version", schema)


def test_minor_schema_version_is_accepted(bundle: Path) -> None:
    rewrite_manifest(bundle, lambda m: m.__setitem__("schema", "edgepack.bundle/1.3"))
    assert Classifier.load(bundle).name == "tiny"


def test_foreign_schema(bundle: Path) -> None:
    rewrite_manifest(bundle, lambda m: m.__setitem__("schema", "something/1"))
    refused(bundle, "manifest.json", "not an edgepack bundle schema")


REQUIRED = [
    "schema",
    "name",
    "files",
    "model",
    "target",
    "model.inputs",
    "model.outputs",
    "model.num_labels",
    "model.max_length",
    "model.vocab_size",
    "model.max_position_embeddings",
    "target.name",
    "target.cpu_features",
]


@pytest.mark.parametrize("path", REQUIRED)
def test_missing_required_field(bundle: Path, path: str) -> None:
    def edit(m: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            m = m[key]
        del m[last]

    rewrite_manifest(bundle, edit)
    refused(bundle, "manifest.json", f"missing required field '{path}'")


def test_missing_file_record_field(bundle: Path) -> None:
    rewrite_manifest(bundle, lambda m: m["files"]["tokenizer.json"].pop("sha256"))
    refused(bundle, "manifest.json", "files.tokenizer.json.sha256")


def test_extra_manifest_keys_are_tolerated(bundle: Path) -> None:
    rewrite_manifest(bundle, lambda m: m.update(recipe={"any": "thing"}, metrics={"accuracy": 0.5}))
    Classifier.load(bundle)


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        ("model.num_labels", "5", "must be int"),
        ("model.num_labels", True, "must be int"),
        ("model.max_length", 1, "at least 2"),
        ("model.vocab_size", 0, "at least 1"),
        ("name", 7, "must be str"),
        ("target.cpu_features", ["avx2", 3], "list of strings"),
        ("model.inputs", [{"name": "input_ids", "type": "int64"}], "input_ids and attention_mask"),
        ("model.inputs", [{"name": "pixels", "type": "int64"}], "'pixels'"),
        ("model.outputs", [{"name": "scores", "type": "float32"}], "no 'logits' output"),
        ("model.outputs", [{"name": "logits", "type": "float32", "shape": ["batch", 9]}], "9 classes"),
        ("oos", {"label": "oos", "threshold": 1.5}, "threshold in [0, 1]"),
        ("oos", {"label": "oos"}, "missing required field 'oos.threshold'"),
    ],
)
def test_bad_manifest_values(bundle: Path, path: str, value: Any, needle: str) -> None:
    def edit(m: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            m = m[key]
        m[last] = value

    rewrite_manifest(bundle, edit)
    refused(bundle, "manifest.json", needle)


DEEP_JSON = b"[" * 200_000 + b"]" * 200_000  # json raises RecursionError, not ValueError, on this


@pytest.mark.parametrize("raw", [b"", b"[1, 2]", b"\xff\xfe{}", b'{"schema": ', DEEP_JSON])
def test_manifest_not_a_json_object(bundle: Path, raw: bytes) -> None:
    (bundle / "manifest.json").write_bytes(raw)
    refused(bundle, "manifest.json")


def unnoticed_flips(raw: bytes) -> list[int]:
    """Positions where flipping one bit of manifest.json changes what the runtime uses without a refusal."""
    _, spec = parse_manifest(raw)
    found = []
    for i in range(len(raw)):
        try:
            _, flipped = parse_manifest(raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :])
        except BundleError:
            continue
        if flipped != spec:
            found.append(i)
    return found


def test_manifest_digest_catches_every_flipped_byte(make_bundle: MakeBundle) -> None:
    # Without manifest_sha256 some flips pass unnoticed (a digit of oos.threshold or of a table size).
    plain = make_bundle(oos={"label": "oos", "threshold": 0.42})
    assert unnoticed_flips((plain / "manifest.json").read_bytes())
    # With it, each is refused or changes nothing the runtime uses (e.g. it renames an informational key).
    path = make_bundle(digest=True, oos={"label": "oos", "threshold": 0.42})
    Classifier.load(path)
    assert unnoticed_flips((path / "manifest.json").read_bytes()) == []


def test_manifest_digest_mismatch(make_bundle: MakeBundle) -> None:
    path = make_bundle(digest=True)
    rewrite_manifest(path, lambda m: m.update(oos={"label": "oos", "threshold": 0.9}))
    refused(path, "manifest.json", "manifest_sha256' does not match")


def test_oos_label_must_be_a_label(make_bundle: MakeBundle) -> None:
    refused(make_bundle(oos={"label": "unknown", "threshold": 0.5}), "manifest.json", "oos.label 'unknown'")


# -- labels and tokenizer -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "needle"),
    [
        (b'{"a": 1}', "JSON list"),
        (b'["a", "b", "c", "d", 5]', "JSON list"),
        (b'["a", "b", "c", "d"]', "has 4 labels but model.num_labels is 5"),
        (b'["a", "b", "c", "d", "a"]', "repeats"),
        (b"not json", "not valid"),
        (DEEP_JSON, "not valid"),
    ],
)
def test_bad_labels(bundle: Path, labels: bytes, needle: str) -> None:
    replace_file(bundle, "labels.json", labels)
    refused(bundle, "labels.json", needle)


def test_tokenizer_not_parseable(bundle: Path) -> None:
    replace_file(bundle, "tokenizer.json", b'{"version": "1.0", "model": {"type": "Nope"}}')
    refused(bundle, "tokenizer.json", "not a valid tokenizers file")


def test_tokenizer_vocabulary_larger_than_embedding_table(make_bundle: MakeBundle) -> None:
    tokenizer = make_tokenizer(extra_tokens=50)
    vocab = tokenizer.get_vocab_size()
    path = make_bundle(tokenizer=tokenizer, vocab_size=vocab - 1)
    refused(path, "tokenizer.json", f"{vocab} tokens", f"{vocab - 1} rows")


def test_max_length_larger_than_position_table(make_bundle: MakeBundle) -> None:
    refused(
        make_bundle(max_length=40, max_position_embeddings=32), "manifest.json", "max_position_embeddings 32"
    )


def test_tokenizer_truncation_must_match_max_length(make_bundle: MakeBundle) -> None:
    refused(
        make_bundle(tokenizer=make_tokenizer(max_length=12), max_length=16), "tokenizer.json", "truncate at"
    )
    tokenizer = make_tokenizer()
    tokenizer.no_truncation()
    refused(make_bundle(tokenizer=tokenizer), "tokenizer.json", "no truncation")


def test_tokenizer_with_padding_is_refused(make_bundle: MakeBundle) -> None:
    tokenizer = make_tokenizer()
    tokenizer.enable_padding(length=16)
    refused(make_bundle(tokenizer=tokenizer), "tokenizer.json", "padding")


def test_lying_manifest_vocab_is_caught_by_the_probe(make_bundle: MakeBundle) -> None:
    """The manifest claims an embedding table as large as the tokenizer's vocabulary; the graph's is not."""
    tokenizer = make_tokenizer(extra_tokens=80)
    rows = tokenizer.get_vocab_size() - 10
    path = make_bundle(graph={"vocab_rows": rows}, tokenizer=tokenizer)
    verify_bundle(path)  # the static checks cannot see the lie
    refused(path, "model.onnx", "test run", f"token id {tokenizer.get_vocab_size() - 1}")


def test_lying_manifest_positions_are_caught_by_the_probe(make_bundle: MakeBundle) -> None:
    path = make_bundle(graph={"positions": 12}, max_length=16, max_position_embeddings=512)
    verify_bundle(path)
    refused(path, "model.onnx", "test run", "max_length=16")


# -- the graph against the manifest -------------------------------------------------------------------------


def test_graph_inputs_must_match_manifest(make_bundle: MakeBundle) -> None:
    path = make_bundle(graph={"token_types": False})  # manifest still lists token_type_ids
    refused(path, "model.onnx", "graph inputs", "token_type_ids")


def test_graph_input_type_must_match_manifest(make_bundle: MakeBundle) -> None:
    path = make_bundle(graph={"input_type": tiny_onnx.INT32})
    refused(path, "model.onnx", "tensor(int32)", "manifest says int64")


def test_static_class_count_must_match_labels(make_bundle: MakeBundle) -> None:
    path = make_bundle(graph={"num_labels": 4})
    refused(path, "model.onnx", "outputs 4 classes", "5 labels")


def test_class_count_mismatch_behind_a_dynamic_output_shape(make_bundle: MakeBundle) -> None:
    # ONNX Runtime may infer the class count itself (static check) or not (then the probe run sees it).
    path = make_bundle(graph={"num_labels": 4, "static_labels": False})
    refused(path, "model.onnx", "4", "5")


def test_not_an_onnx_graph(bundle: Path) -> None:
    replace_file(bundle, "model.onnx", b"\x08\x08\x12\xff\xff")
    refused(bundle, "model.onnx", "not a valid ONNX model")


def test_ort_format_is_refused(bundle: Path) -> None:
    replace_file(bundle, "model.onnx", b"\x1c\x00\x00\x00ORTM" + bytes(40))
    refused(bundle, "model.onnx", "ORT format")


def test_graph_ort_cannot_load(bundle: Path) -> None:
    broken = tiny_onnx.model(
        tiny_onnx.graph("g", [tiny_onnx.node("NoSuchOp", ["x"], ["logits"])], [], [], [])
    )
    replace_file(bundle, "model.onnx", broken)
    refused(bundle, "model.onnx", "ONNX Runtime cannot load it")
