"""Tiny, real fixtures: a 2-layer BERT with a WordPiece tokenizer trained here, and a 4-intent dataset with an
out-of-scope class, so the whole pipeline runs in seconds with real torch, ONNX and ONNX Runtime sessions."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

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
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    corpus = [t for texts in INTENTS.values() for t in texts] + [
        "the quick brown fox jumps over the lazy dog"
    ]
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=300, special_tokens=special))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(folder)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


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
