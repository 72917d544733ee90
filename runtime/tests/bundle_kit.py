"""Build bundles for tests: a WordPiece tokenizer made from a word list, and a bundle folder around any graph.

`write_bundle` writes the layout and manifest of DESIGN.md / issue 2, with file records from the runtime's own
`file_record`; `edit` lets a test change the manifest before it is written.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from edgepack_runtime.bundle import BUNDLE_FILES, DIGEST_KEY, SCHEMA, file_record, manifest_digest

# Where the shared CLINC150 data lives beside a checkout (../shared/data/clinc150 from the project root).
CLINC_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "clinc150"

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SENTENCES = (
    "what is my account pin number",
    "how do i transfer money to the bank",
    "weather today in paris",
    "book a flight for tomorrow",
    "play some music",
    "set an alarm",
    "cancel order",
    "where was it made",
    "please tell me",
)
WORDS = sorted({word for sentence in SENTENCES for word in sentence.split()})
LABELS = ["pin_change", "transfer", "weather", "book_flight", "oos"]


def vocabulary(extra: int = 0) -> list[str]:
    """Specials, the words, every letter and digit as a word start and as a continuation, `extra` fillers."""
    pieces = list(string.ascii_lowercase + string.digits)
    words = list(dict.fromkeys(WORDS + pieces + [f"##{p}" for p in pieces]))
    return SPECIALS + words + [f"extra{i}" for i in range(extra)]


def make_tokenizer(*, max_length: int = 16, extra_tokens: int = 0, special_tokens: bool = True) -> Tokenizer:
    vocab = {token: i for i, token in enumerate(vocabulary(extra_tokens))}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if special_tokens:
        tokenizer.post_processor = processors.BertProcessing(
            ("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"])
        )
    tokenizer.enable_truncation(max_length)
    return tokenizer


MakeBundle = Callable[..., Path]  # the make_bundle fixture: make_bundle(model=None, graph=None, **kwargs)


def write_bundle(
    folder: Path,
    model: bytes,
    *,
    tokenizer: Tokenizer | None = None,
    labels: Sequence[str] = LABELS,
    name: str = "tiny",
    inputs: Sequence[str] = ("input_ids", "attention_mask", "token_type_ids"),
    input_type: str = "int64",
    max_length: int = 16,
    vocab_size: int | None = None,
    max_position_embeddings: int = 32,
    cpu_features: Sequence[str] = (),
    oos: dict[str, Any] | None = None,
    edit: Callable[[dict[str, Any]], None] | None = None,
    digest: bool = False,
) -> Path:
    """Write a bundle folder; vocab_size defaults to the tokenizer's vocabulary (an honest manifest)."""
    tokenizer = tokenizer or make_tokenizer(max_length=max_length)
    files = {
        "model.onnx": model,
        "tokenizer.json": tokenizer.to_str().encode("utf-8"),
        "labels.json": json.dumps(list(labels)).encode("utf-8"),
    }
    assert set(files) == set(BUNDLE_FILES)
    shape = ["batch", "sequence"]
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "name": name,
        "created": "2025-01-01T00:00:00Z",
        "edgepack_version": "0.1.0",
        "files": {n: file_record(data) for n, data in files.items()},
        "model": {
            "inputs": [{"name": n, "type": input_type, "shape": shape} for n in inputs],
            "outputs": [{"name": "logits", "type": "float32", "shape": ["batch", len(labels)]}],
            "opset": 17,
            "num_labels": len(labels),
            "max_length": max_length,
            "vocab_size": vocab_size or tokenizer.get_vocab_size(with_added_tokens=True),
            "max_position_embeddings": max_position_embeddings,
        },
        "target": {"name": "test-target", "cpu_features": list(cpu_features)},
        "oos": oos,
        "quantization": None,
    }
    if edit:
        edit(manifest)
    if digest:
        manifest[DIGEST_KEY] = manifest_digest(manifest)
    folder.mkdir(parents=True, exist_ok=True)
    for n, data in files.items():
        (folder / n).write_bytes(data)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return folder


def rewrite_manifest(folder: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def replace_file(folder: Path, name: str, data: bytes) -> None:
    """Replace a bundle file and update its manifest record (so only the content check can object)."""
    (folder / name).write_bytes(data)
    rewrite_manifest(folder, lambda m: m["files"].__setitem__(name, file_record(data)))
