"""Tiny, real fixtures: a 2-layer BERT with a WordPiece tokenizer trained here, and a 4-intent dataset with an
out-of-scope class, so the whole pipeline runs in seconds with real torch, ONNX and ONNX Runtime sessions."""

from __future__ import annotations

import csv
import os
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


def _wordpiece() -> Any:
    """BERT's and DistilBERT's tokenizer kind: lowercasing WordPiece with [CLS] ... [SEP]."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=special))
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
    """XLM-R's tokenizer kind: a SentencePiece-style unigram model (Metaspace) with <s> ... </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=200, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], unk_token="<unk>"
    )
    tok.train_from_iterator(CORPUS, trainer)
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
