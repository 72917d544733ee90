"""manifest_sha256: sha256 over RFC 8785 bytes from schema 1.1 on; over Python's json.dumps for schema 1.

The canonical bytes are checked against RFC 8785's own examples, so a loader in another language that follows
the RFC gets the same digest.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import pytest

from edgepack_runtime import BundleError, Classifier
from edgepack_runtime.bundle import DIGEST_KEY, SCHEMA, digest_serialisation, manifest_digest, verify_bundle
from edgepack_runtime.manifest import parse_manifest

from .bundle_kit import MakeBundle, rewrite_manifest

LEGACY = "edgepack.bundle/1"
jcs = digest_serialisation(SCHEMA)


def legacy_digest(manifest: dict[str, Any]) -> str:
    """What edgepack wrote before schema 1.1, spelled out here (not taken from the runtime)."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def with_extras(manifest: dict[str, Any]) -> None:
    """Informational fields whose canonical form differs between Python's json and RFC 8785."""
    manifest["training"] = {"learning_rate": 5e-05, "weight_decay": 1e-07, "epochs": 3.0, "big": 1e21}
    manifest["notes"] = {"€": "Euro", "😀": "grin", "דּ": "dalet", "ö": "o-umlaut", "ctl": "\x0f\n"}


# -- the canonical bytes -------------------------------------------------------------------------------------


def test_schema_picks_the_serialisation() -> None:
    assert SCHEMA == "edgepack.bundle/1.1"
    body = {"b": 5e-05, "a": "€"}
    assert digest_serialisation(LEGACY)(body) == '{"a":"€","b":5e-05}'.encode()
    assert digest_serialisation("edgepack.bundle/1.0")(body) == '{"a":"€","b":5e-05}'.encode()
    for schema in (SCHEMA, "edgepack.bundle/1.2", "edgepack.bundle/1.10"):
        assert digest_serialisation(schema)(body) == '{"a":"€","b":0.00005}'.encode()
    for schema in (
        "edgepack.bundle/2",
        "edgepack.bundle/2.1",
        "edgepack.bundle/0.1",
        "x/1",
        "edgepack.bundle/1.",
    ):
        with pytest.raises(BundleError):
            digest_serialisation(schema)


# RFC 8785 appendix B: IEEE 754 doubles (as hex bit patterns) and their canonical text (ECMAScript's).
NUMBERS = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "text"), NUMBERS)
def test_numbers_as_rfc_8785_appendix_b(bits: str, text: str) -> None:
    (value,) = struct.unpack(">d", bytes.fromhex(bits))
    assert jcs({"n": value}) == b'{"n":' + text.encode() + b"}"


def test_rfc_8785_section_3_2_2_example() -> None:
    # The input of RFC 8785 3.2.2, as a JSON text, and its expected output.
    source = r"""{
      "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
      "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
      "literals": [null, true, false]
    }"""
    expected = (
        r'{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        r'"string":"€$\u000f\nA' + "'" + r'B\"\\\\\"/"}'
    )
    assert jcs(json.loads(source)) == expected.encode("utf-8")


def test_rfc_8785_section_3_2_3_key_order_is_utf16() -> None:
    # RFC 8785 3.2.3: keys sort by UTF-16 code units, so U+1F600 (surrogates D83D DE00) precedes U+FB33,
    # where sorting by code point (Python's sort_keys) puts it last.
    source = r"""{
      "\u20ac": "Euro Sign",
      "\r": "Carriage Return",
      "\ufb33": "Hebrew Letter Dalet With Dagesh",
      "1": "One",
      "\ud83d\ude00": "Emoji: Grinning Face",
      "\u0080": "Control",
      "\u00f6": "Latin Small Letter O With Diaeresis"
    }"""
    keys = ["\r", "1", "\u0080", "ö", "€", "😀", "\ufb33"]
    values = [
        "Carriage Return",
        "One",
        "Control",
        "Latin Small Letter O With Diaeresis",
        "Euro Sign",
        "Emoji: Grinning Face",
        "Hebrew Letter Dalet With Dagesh",
    ]
    expected = "{" + ",".join(f'"{k}":"{v}"' for k, v in zip(keys, values, strict=True)) + "}"
    expected = expected.replace("\r", "\\r")  # the only key escaped; U+0080 and above stay raw UTF-8
    assert jcs(json.loads(source)) == expected.encode("utf-8")
    legacy = digest_serialisation(LEGACY)(json.loads(source)).decode("utf-8")
    assert legacy.index("😀") > legacy.index("\ufb33")  # what made the old digest Python-only


def test_the_digest_is_sha256_of_the_rfc_8785_bytes_in_lowercase_hex() -> None:
    manifest: dict[str, Any] = {"schema": SCHEMA, "name": "x", DIGEST_KEY: "ignored"}
    with_extras(manifest)
    canonical = (
        '{"name":"x","notes":{"ctl":"\\u000f\\n","ö":"o-umlaut","€":"Euro","😀":"grin","דּ":"dalet"},'
        '"schema":"edgepack.bundle/1.1",'
        '"training":{"big":1e+21,"epochs":3,"learning_rate":0.00005,"weight_decay":1e-7}}'
    )
    assert manifest_digest(manifest) == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert manifest_digest({**manifest, "schema": LEGACY}) == legacy_digest({**manifest, "schema": LEGACY})


# -- bundles -------------------------------------------------------------------------------------------------


def test_a_bundle_written_now_verifies(make_bundle: MakeBundle) -> None:
    path = make_bundle(digest=True, oos={"label": "oos", "threshold": 0.42}, edit=with_extras)
    manifest = verify_bundle(path)
    assert manifest["schema"] == SCHEMA
    body = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    assert manifest[DIGEST_KEY] == hashlib.sha256(jcs(body)).hexdigest() != legacy_digest(manifest)
    assert Classifier.load(path).manifest == manifest


def test_a_legacy_schema_1_bundle_still_loads(make_bundle: MakeBundle) -> None:
    def legacy(manifest: dict[str, Any]) -> None:
        manifest["schema"] = LEGACY
        with_extras(manifest)
        manifest[DIGEST_KEY] = legacy_digest(manifest)

    path = make_bundle(oos={"label": "oos", "threshold": 0.42}, edit=legacy)
    manifest = verify_bundle(path)
    assert manifest["schema"] == LEGACY and manifest[DIGEST_KEY] == legacy_digest(manifest)
    assert Classifier.load(path).name == "tiny"


def test_a_digest_of_the_other_method_is_refused(make_bundle: MakeBundle) -> None:
    # A 1.1 manifest carrying the old kind of digest (and the reverse) does not pass.
    def old_digest_new_schema(manifest: dict[str, Any]) -> None:
        with_extras(manifest)
        manifest[DIGEST_KEY] = legacy_digest(manifest)

    with pytest.raises(BundleError, match="does not match"):
        verify_bundle(make_bundle(edit=old_digest_new_schema))

    def new_digest_old_schema(manifest: dict[str, Any]) -> None:
        manifest["schema"] = LEGACY
        with_extras(manifest)
        manifest[DIGEST_KEY] = hashlib.sha256(jcs(manifest)).hexdigest()

    with pytest.raises(BundleError, match="does not match"):
        verify_bundle(make_bundle(edit=new_digest_old_schema))


@pytest.mark.parametrize("schema", [LEGACY, SCHEMA, "edgepack.bundle/1.7"])
@pytest.mark.parametrize(
    "change",
    [
        lambda m: m["oos"].__setitem__("threshold", 0.9),
        lambda m: m["training"].__setitem__("learning_rate", 5e-5 + 1e-12),
        lambda m: m["notes"].__setitem__("€", "Pound"),
        lambda m: m.__setitem__("schema", "edgepack.bundle/1.1" if m["schema"] != SCHEMA else LEGACY),
        lambda m: m.pop("notes"),
    ],
)
def test_an_edited_manifest_is_refused(make_bundle: MakeBundle, schema: str, change: Any) -> None:
    def sign(manifest: dict[str, Any]) -> None:
        manifest["schema"] = schema
        with_extras(manifest)
        manifest[DIGEST_KEY] = manifest_digest(manifest)

    path = make_bundle(oos={"label": "oos", "threshold": 0.42}, edit=sign)
    verify_bundle(path)
    rewrite_manifest(path, change)
    with pytest.raises(BundleError, match=f"'{DIGEST_KEY}' does not match") as info:
        Classifier.load(path)
    assert info.value.file == "manifest.json"


def test_reformatting_the_manifest_keeps_its_digest(make_bundle: MakeBundle) -> None:
    # The digest is over the parsed values: key order, spacing, escapes and number spelling may change.
    path = make_bundle(digest=True, edit=with_extras)
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    respelled = json.dumps(dict(reversed(manifest.items())), ensure_ascii=True, indent=4)
    respelled = respelled.replace("5e-05", "0.50e-4").replace('"epochs": 3.0', '"epochs": 3')
    assert "0.50e-4" in respelled
    (path / "manifest.json").write_text(respelled, encoding="utf-8")
    assert verify_bundle(path) == manifest


@pytest.mark.parametrize("value", ["NaN", "Infinity", "9007199254740993", '"\\ud800"'])
def test_a_value_rfc_8785_cannot_hold_is_refused_when_there_is_a_digest(value: str) -> None:
    manifest = {"schema": SCHEMA, "name": "x", DIGEST_KEY: "0" * 64}
    raw = json.dumps(manifest)[:-1] + f', "odd": {value}}}'
    with pytest.raises(BundleError, match="cannot be checked") as info:
        parse_manifest(raw.encode("utf-8"))
    assert info.value.file == "manifest.json"
