"""Tiny, real fixtures: a 2-layer BERT with a WordPiece tokenizer trained here, and a 4-intent dataset with an
out-of-scope class, so the whole pipeline runs in seconds with real torch, ONNX and ONNX Runtime sessions."""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tiny_models import save_tiny_encoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

INTENTS = {
    "balance": [
        "what is my account balance",
        "how much money do i have",
        "show my balance please",
        "tell me the balance of my checking account",
        "balance in savings",
        "how much is in my account",
    ],
    "transfer": [
        "transfer money to savings",
        "send fifty dollars to my mom",
        "move cash between accounts",
        "wire money to john",
        "transfer two hundred dollars",
        "send money from checking",
    ],
    "weather": [
        "what is the weather today",
        "will it rain tomorrow",
        "is it sunny outside",
        "weather forecast for the weekend",
        "how cold is it",
        "do i need an umbrella",
    ],
    "alarm": [
        "set an alarm for seven",
        "wake me up at six am",
        "alarm for tomorrow morning",
        "set a timer alarm",
        "cancel my alarm",
        "create an alarm at noon",
    ],
    "oos": [
        "who wrote hamlet",
        "how tall is everest",
        "tell me a joke about cats",
        "what is love",
        "recommend a movie",
        "how do birds fly",
    ],
}


def _write_split(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/validation/test CSV files; every intent in every split."""
    folder = tmp_path_factory.mktemp("tiny-data")
    train, validation, test = [], [], []
    for label, texts in INTENTS.items():
        train += [(t, label) for t in texts[:4]] + [(t + " please", label) for t in texts[:4]]
        validation += [(texts[4], label)]
        test += [(texts[5], label), (texts[4] + " now", label)]
    _write_split(folder / "train.csv", train)
    _write_split(folder / "validation.csv", validation)
    _write_split(folder / "test.csv", test)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT base model (no classification head) with its own WordPiece tokenizer, as safetensors."""
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast(tokenizer_object=_wordpiece(), **_WORDPIECE_SPECIAL)
    folder = tmp_path_factory.mktemp("tiny-bert")
    return save_tiny_encoder(folder, "bert", tokenizer, layers=2, heads=2, seed=None)  # unseeded, as ever


CORPUS = [t for texts in INTENTS.values() for t in texts] + ["the quick brown fox jumps over the lazy dog"]
_WORDPIECE_SPECIAL = {
    "unk_token": "[UNK]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
# RoBERTa's and XLM-R's special tokens, at their ids (<s> 0, <pad> 1, </s> 2, <unk> 3) and <mask>.
_ROBERTA_SPECIAL = {
    "bos_token": "<s>",
    "pad_token": "<pad>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
    "cls_token": "<s>",
    "sep_token": "</s>",
}


def _words(normalizer: Any, pre_tokenizer: Any) -> list[tuple[str, int]]:
    """CORPUS's words as `pre_tokenizer` splits them after `normalizer`, with their counts, most frequent first
    (ties by spelling)."""
    counts = Counter(
        word
        for text in CORPUS
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text) if normalizer else text)
    )
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


# The WordPiece and unigram vocabularies are built here rather than by tokenizers' trainers: those break ties
# in a different order in every process (a Rust HashMap), so each test run had other token ids, and the tiny
# models trained on them now and then collapsed to one intent. Byte-level BPE's trainer gives the same
# vocabulary every time.
def _wordpiece() -> Any:
    """BERT's and DistilBERT's tokenizer kind: lowercasing WordPiece with [CLS] ... [SEP]; its 300 pieces the
    special tokens, every character alone and as a continuation (##c), every whole word, then the most frequent
    word starts and continuations of 2-4 characters."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = _words(normalizer, pre_tokenizer)
    chars = sorted({c for word, _ in words for c in word})
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    pieces += [word for word, _ in words if word not in pieces]
    parts = Counter(
        word[i:j] if i == 0 else f"##{word[i:j]}"
        for word, count in words
        for i in range(len(word))
        for j in range(i + 2, min(i + 4, len(word)) + 1)
        for _ in range(count)
    )
    known = set(pieces)
    ranked = sorted((part for part in parts if part not in known), key=lambda part: (-parts[part], part))
    pieces += ranked[: max(0, 300 - len(pieces))]
    tok = Tokenizer(models.WordPiece({piece: i for i, piece in enumerate(pieces)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return tok


def _byte_level_bpe() -> Any:
    """RoBERTa's tokenizer kind: byte-level BPE with <s> ... </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.RobertaProcessing(sep=("</s>", 2), cls=("<s>", 0))
    return tok


def _unigram() -> Any:
    """XLM-R's tokenizer kind: a SentencePiece-style unigram model (Metaspace) with <s> ... </s>; its pieces
    every whole word (with its leading ▁) and every character, scored by their log frequency."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    pre_tokenizer = pre_tokenizers.Metaspace()
    words = _words(None, pre_tokenizer)
    total = sum(count for _, count in words)
    chars = Counter(c for word, count in words for c in word for _ in range(count))
    pieces = [(word, math.log(count / total)) for word, count in words]
    # Characters score far below any word, so a known word stays one piece.
    known = {word for word, _ in words}
    pieces += [(c, math.log(count / total) - 5.0) for c, count in sorted(chars.items()) if c not in known]
    special = [(token, 0.0) for token in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")]
    tok = Tokenizer(models.Unigram(special + pieces, unk_id=3))
    tok.pre_tokenizer, tok.decoder = pre_tokenizer, decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return tok


def _save_family(folder: Path, family: str) -> None:
    """A 3-layer, 4-head (head size 8) base model of `family` with a tokenizer of its kind, as safetensors."""
    import transformers as tf

    if family == "distilbert":
        tokenizer = tf.DistilBertTokenizerFast(tokenizer_object=_wordpiece(), **_WORDPIECE_SPECIAL)
    else:  # RoBERTa's graph, in two tokenizer kinds
        roberta = family == "roberta"
        fast = tf.RobertaTokenizerFast if roberta else tf.XLMRobertaTokenizerFast
        tokenizer = fast(tokenizer_object=_byte_level_bpe() if roberta else _unigram(), **_ROBERTA_SPECIAL)
    save_tiny_encoder(folder, family, tokenizer, layers=3, heads=4)


@pytest.fixture(scope="session")
def tiny_family_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Base models of the other encoder families ("distilbert", "roberta", "xlm-roberta"), made on first use."""
    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            made[family] = tmp_path_factory.mktemp(f"tiny-{family}")
            _save_family(made[family], family)
        return made[family]

    return get


@pytest.fixture()
def tiny_recipe(tmp_path: Path, tiny_data: Path, tiny_model: Path) -> Path:
    """A recipe file for the tiny fixtures: every stage, a two-trial search, seconds in all."""
    path = tmp_path / "tiny.toml"
    path.write_text(f"""
description = "tiny test recipe"
target = "cpu-avx2"
cache_dir = "{tmp_path / "cache"}"
threads = 1

[data]
source = "{tiny_data}"
max_length = 32

[teacher]
model = "{tiny_model}"
epochs = 3
learning_rate = 1e-3
batch_size = 8

[distill]
layers = [0]
epochs = 2
learning_rate = 1e-3
batch_size = 8

[search]
trials = 2
timeout_minutes = 5
train_fraction = 0.5
epochs = [1, 2]

[package]
name = "tiny-int8"
output_dir = "{tmp_path / "bundles"}"
""")
    return path
