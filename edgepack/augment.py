"""Augment stage: text the teacher labels for the student beyond the training split, and the teacher's logits
on it, computed once and cached.

A distilled student learns the teacher's function only where it sees the teacher: on 15,000 training queries
that is not much. As Tang et al. (2019, "Distilling task-specific knowledge from BERT into simple neural
networks") and TinyBERT did, each copy of a training text has words masked (the tokenizer's mask token) or
replaced by words of the training text (drawn by frequency), is cut to a random n-gram, or is joined to the
second half of a text from another class. A user's own unlabelled in-domain queries (`[augment] unlabelled`)
are added as they are. The text has no labels: it feeds only the distillation term of the loss.

Written here rather than taken from an augmentation library: these four word-level operations are a few lines
over the training text's own words, while the libraries that offer them (nlpaug, TextAttack) bring models,
corpora or downloads with them and lack n-gram sampling and the teacher's mask token.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edgepack import models
from edgepack.cache import Cache, cache_key, hash_file
from edgepack.data import DataError, LabelledSplits
from edgepack.recipe import AugmentConfig
from edgepack.training import TeacherResult, TransferSet, teacher_logits

log = logging.getLogger(__name__)

MAX_NGRAM = 5
CACHE_FORMAT = "texts.json"  # in the cache key: folders written as texts.txt (one text per line) are not read


class _Augmenter:
    """Makes augmented copies of texts from their words, with one seeded random generator."""

    def __init__(self, words: list[list[str]], labels: np.ndarray, config: AugmentConfig, mask: str) -> None:
        self.words, self.labels, self.config, self.mask = words, labels, config, mask
        self.rng = np.random.default_rng(config.seed)
        # Every word occurrence of the training text: a uniform draw from it is a draw by frequency.
        self.pool = [w for text in words for w in text]

    def copy_of(self, i: int) -> str:
        words = self._mixed(i) if self.rng.random() < self.config.mix_prob else list(self.words[i])
        words = [self._word(w) for w in words]
        if len(words) > 1 and self.rng.random() < self.config.ngram_prob:
            n = int(self.rng.integers(1, min(MAX_NGRAM, len(words)) + 1))
            start = int(self.rng.integers(0, len(words) - n + 1))
            words = words[start : start + n]
        return " ".join(words)

    def _mixed(self, i: int) -> list[str]:
        """The first half of text i and the second half of a text from another class."""
        for _ in range(10):
            j = int(self.rng.integers(len(self.words)))
            if self.labels[j] != self.labels[i]:
                first, second = self.words[i], self.words[j]
                return first[: (len(first) + 1) // 2] + second[len(second) // 2 :]
        return list(self.words[i])

    def _word(self, word: str) -> str:
        r = self.rng.random()
        if r < self.config.mask_prob:
            return self.mask
        if r < self.config.mask_prob + self.config.replace_prob:
            return self.pool[int(self.rng.integers(len(self.pool)))]
        return word


def augmented_texts(splits: LabelledSplits, config: AugmentConfig, mask_token: str) -> list[str]:
    """`config.copies` augmented copies of every training text, without duplicates or training texts."""
    texts = splits.texts["train"]
    augmenter = _Augmenter([t.split() for t in texts], splits.label_ids["train"], config, mask_token)
    seen = set(texts)
    out: list[str] = []
    for _ in range(config.copies):
        for i in range(len(texts)):
            text = augmenter.copy_of(i)
            if text.strip() and text not in seen:
                seen.add(text)
                out.append(text)
    return out


def read_unlabelled(path: Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped, in order, without duplicates."""
    if not path.is_file():
        raise DataError(
            f"[augment] unlabelled = {str(path)!r}: no such file. Give a UTF-8 text file with one query per "
            "line, or unset the key."
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}, line {line}: not UTF-8 ({exc.reason} at byte {exc.start}). Re-save the file as UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8`)."
        ) from None
    lines = dict.fromkeys(line.strip() for line in text.splitlines())
    lines.pop("", None)
    if not lines:
        raise DataError(f"{path} has no text: give one query per line.")
    return list(lines)


def _made_by(config: AugmentConfig) -> dict[str, Any]:
    """The settings that make the transfer text (not where it is used)."""
    return {k: v for k, v in asdict(config).items() if k != "use_in"}


def _unlabelled_fingerprint(config: AugmentConfig) -> str | None:
    return hash_file(Path(config.unlabelled)) if config.unlabelled is not None else None


def run(teacher: TeacherResult, config: AugmentConfig, max_length: int, cache: Cache) -> TransferSet | None:
    """The transfer text and the teacher's logits on it (cached), or None when `[augment]` is off."""
    if not config.enabled:
        return None
    parts = (teacher.key, _made_by(config), _unlabelled_fingerprint(config), max_length)
    key = cache_key(*parts, CACHE_FORMAT)
    folder = cache.folder("transfer", key)
    with cache.claim(folder) as fresh:
        if not fresh:
            log.info("augment: reusing cached transfer text %s", folder)
            texts = json.loads((folder / "texts.json").read_text(encoding="utf-8"))
            logits = np.load(folder / "logits.npy")
            return TransferSet(texts, logits, cache.record(folder) | {"cached": True})
        result = _make(teacher, config, max_length, key)
        (folder / "texts.json").write_text(json.dumps(result.texts, ensure_ascii=False), encoding="utf-8")
        np.save(folder / "logits.npy", result.logits)
        cache.finish(folder, result.record)
    return TransferSet(result.texts, result.logits, result.record | {"cached": False})


def _make(teacher: TeacherResult, config: AugmentConfig, max_length: int, key: str) -> TransferSet:
    started = time.perf_counter()
    tokenizer = models.load_tokenizer(teacher.model_dir)
    splits = teacher.splits
    copies = augmented_texts(splits, config, tokenizer.mask_token) if config.copies else []
    unlabelled: list[str] = []
    if config.unlabelled is not None:
        known = set(splits.texts["train"]) | set(copies)
        unlabelled = [t for t in read_unlabelled(Path(config.unlabelled)) if t not in known]
    texts = copies + unlabelled
    log.info("augment: the teacher labels %d augmented and %d unlabelled texts", len(copies), len(unlabelled))
    logits = teacher_logits(teacher, texts, max_length, desc="teacher logits (transfer)")
    record: dict[str, Any] = {
        "augmented": len(copies),
        "unlabelled": len(unlabelled),
        "unlabelled_file": config.unlabelled,
        "settings": _made_by(config),
        "teacher_top_label_share": _top_label_share(logits, splits),
        "seconds": round(time.perf_counter() - started, 1),
        "cache_key": key,
    }
    return TransferSet(texts, logits, record)


def _top_label_share(logits: np.ndarray, splits: LabelledSplits) -> dict[str, float] | None:
    """How often the teacher's top label on the transfer text is the out-of-scope class."""
    oos_id = splits.oos_id()
    if oos_id is None or not len(logits):
        return None
    return {splits.labels[oos_id]: round(float((logits.argmax(1) == oos_id).mean()), 4)}
