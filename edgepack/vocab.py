"""Vocabulary trimming for the prune stage: keep the WordPiece pieces the training text uses, every
single-character piece and the special tokens; rewrite the tokenizer with remapped ids; slice the embedding table.

Why every single character: WordPiece matches the longest known piece greedily and turns the whole word into
[UNK] when it gets stuck. With every character available as a piece in its word-initial and its `##` form, the
matcher can always advance by one character, so a word the full vocabulary spells never becomes [UNK]. That
holds when the full vocabulary has those single-character forms for every character its pieces use (BERT's
uncased vocabulary does); otherwise the pieces holding such a character are kept too and the record counts them.

What stays identical, and what does not: a text whose full-vocabulary pieces were all kept tokenizes to exactly
the same pieces (at each step the longest match is still there, and nothing longer was added), and with the
embedding rows copied it gets the same logits. A text using a piece absent from the training text (a rarer word)
is split into smaller pieces instead, so its prediction can change. `compare` measures both on the texts it is
given; nothing outside the training split decides what is kept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgepack.errors import StageError
from edgepack.training import predict_logits

log = logging.getLogger(__name__)

LOGIT_TOLERANCE = 1e-4  # identically tokenized texts: only padding-length rounding may differ
# How `plan` treats the first ids (keep_first): part of the prune cache key, so a student trimmed under an
# earlier rule (which kept BERT's [unusedN] rows) is trimmed again rather than reused.
FIRST_IDS_RULE = "first ids the tokenizer can produce"


@dataclass
class VocabPlan:
    kept: list[int]  # old ids, ascending; the new id of kept[i] is i
    record: dict[str, Any]

    @property
    def new_id(self) -> dict[int, int]:
        return {old: new for new, old in enumerate(self.kept)}


def _backend_json(tokenizer: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(tokenizer.backend_tokenizer.to_str())
    kind = data["model"].get("type")
    if kind != "WordPiece":
        raise StageError(
            f"prune: [prune] vocab = 'train' supports WordPiece tokenizers (BERT family); this tokenizer's model "
            f"is {kind}. Set [prune] vocab = 'full'."
        )
    return data


def _unguarded_pieces(vocab: dict[str, int], prefix: str, special: set[str]) -> tuple[set[int], list[str]]:
    """Pieces holding a character whose single-character form (initial or `##`) the vocabulary lacks."""
    initial = {t for t in vocab if len(t) == 1}
    continuation = {t[len(prefix) :] for t in vocab if t.startswith(prefix) and len(t) == len(prefix) + 1}
    lacking: set[str] = set()
    pieces: set[int] = set()
    for token, i in vocab.items():
        if token in special:
            continue
        if token.startswith(prefix) and len(token) > len(prefix):
            missing = {c for c in token[len(prefix) :] if c not in continuation}
        else:
            missing = {c for c in token[1:] if c not in continuation} | ({token[0]} - initial)
        if missing:
            lacking |= missing
            pieces.add(i)
    return pieces, sorted(lacking)


def _producible(backend: Any, piece: str | None, prefix: str) -> bool:
    """Whether the tokenizer could ever emit `piece`: its text (without the continuation prefix) must come out
    of the normalizer unchanged and stay one word through the pre-tokenizer. BERT's `[unusedN]` rows fail (the
    pre-tokenizer splits off the brackets), as would a piece with a capital under a lowercasing normalizer.
    Conservative: a piece that passes may still never be matched, and an id outside the WordPiece vocabulary (an
    added token) is kept."""
    if piece is None:
        return True
    text = piece[len(prefix) :] if piece.startswith(prefix) and len(piece) > len(prefix) else piece
    if backend.normalizer is not None and backend.normalizer.normalize_str(text) != text:
        return False
    words = [text] if backend.pre_tokenizer is None else backend.pre_tokenizer.pre_tokenize_str(text)
    return len(words) == 1 and words[0][0] == text


def plan(tokenizer: Any, train_texts: Sequence[str], keep_first: int = 0) -> VocabPlan:
    """Which ids to keep: special tokens, every piece of the (untruncated) training text, single characters,
    and every id below `keep_first`. BERT-family WordPiece vocabularies list their pieces by frequency in the
    pretraining corpus (`the`, `of`, `and`, ... right after the single characters), so the first ids are the
    most common pieces: keeping them makes unseen text segment as before far more often. Among those first ids,
    pieces the tokenizer can never emit (BERT's ~1,000 `[unusedN]` rows) are dropped: no text reaches them."""
    from tokenizers import Tokenizer

    data = _backend_json(tokenizer)
    model = data["model"]
    vocab: dict[str, int] = model["vocab"]
    prefix = model.get("continuing_subword_prefix") or "##"
    special_tokens = {t["content"] for t in data.get("added_tokens", [])} | set(tokenizer.all_special_tokens)
    special = {t["id"] for t in data.get("added_tokens", [])} | set(tokenizer.all_special_ids)
    special.add(vocab[model["unk_token"]])
    vocab_by_id = {i: t for t, i in vocab.items()}
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    used = {i for enc in backend.encode_batch(list(train_texts), add_special_tokens=False) for i in enc.ids}
    singles = {
        i for t, i in vocab.items() if len(t) == 1 or (t.startswith(prefix) and len(t) == len(prefix) + 1)
    }
    unguarded, lacking = _unguarded_pieces(vocab, prefix, special_tokens)
    if lacking:
        log.warning(
            "prune: the vocabulary has no single-character piece for %d characters (%s...); the %d pieces "
            "holding them are kept, and texts may still get new [UNK]s (see the record)",
            len(lacking),
            "".join(lacking[:20]),
            len(unguarded),
        )
    size = tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=True)
    first = set(range(min(keep_first, size)))
    frequent = {i for i in first if _producible(backend, vocab_by_id.get(i), prefix)}
    kept = sorted(special | used | singles | unguarded | frequent)
    record = {
        "mode": "train",
        "before": size,
        "after": len(kept),
        "special_tokens": len(special),
        "pieces_in_training_text": len(used),
        "single_character_pieces": len(singles),
        "characters_without_single_piece": len(lacking),
        "kept_for_those_characters": len(unguarded - used - singles - special),
        "kept_first_ids": keep_first,
        "first_ids_never_produced": len(first.difference(kept)),  # dropped: BERT's [unusedN] rows, "..."
        "chosen_from": "train",
    }
    log.info("prune: vocabulary %d -> %d pieces", size, len(kept))
    return VocabPlan(kept, record)


def _remap_processor(processor: dict[str, Any] | None, new_id: dict[int, int]) -> None:
    if processor is None:
        return
    kind = processor.get("type")
    if kind == "TemplateProcessing":
        for special in processor["special_tokens"].values():
            special["ids"] = [new_id[i] for i in special["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            token, old = processor[key]
            processor[key] = [token, new_id[old]]
    elif kind == "Sequence":
        for inner in processor["processors"]:
            _remap_processor(inner, new_id)
    elif kind != "ByteLevel":
        raise StageError(
            f"prune: cannot remap token ids in a {kind} post-processor; set [prune] vocab = 'full'."
        )


def trimmed_tokenizer_json(tokenizer: Any, vocab_plan: VocabPlan) -> str:
    """The tokenizer's tokenizer.json with only the kept pieces, ids renumbered 0..n-1 in their old order."""
    data = _backend_json(tokenizer)
    new_id = vocab_plan.new_id
    old_vocab: dict[str, int] = data["model"]["vocab"]
    data["model"]["vocab"] = {
        t: new_id[i] for t, i in sorted(old_vocab.items(), key=lambda kv: kv[1]) if i in new_id
    }
    for added in data.get("added_tokens", []):
        added["id"] = new_id[added["id"]]
    _remap_processor(data.get("post_processor"), new_id)
    if data.get("padding"):
        data["padding"]["pad_id"] = new_id[data["padding"]["pad_id"]]
    return json.dumps(data, ensure_ascii=False)


def save_trimmed_tokenizer(tokenizer: Any, vocab_plan: VocabPlan, folder: Path) -> None:
    """Save the tokenizer into folder, then rewrite every file that carries ids: tokenizer.json, vocab.txt and
    tokenizer_config.json's added_tokens_decoder. The folder loads back as the same fast tokenizer class."""
    tokenizer.save_pretrained(folder)
    text = trimmed_tokenizer_json(tokenizer, vocab_plan)
    (folder / "tokenizer.json").write_text(text, encoding="utf-8")
    vocab = json.loads(text)["model"]["vocab"]
    if (folder / "vocab.txt").is_file():
        ordered = sorted(vocab, key=vocab.__getitem__)
        (folder / "vocab.txt").write_text("".join(f"{t}\n" for t in ordered), encoding="utf-8")
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        decoder = config.get("added_tokens_decoder") or {}
        new_id = vocab_plan.new_id
        config["added_tokens_decoder"] = {str(new_id[int(k)]): v for k, v in decoder.items()}
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def slice_embeddings(model: Any, vocab_plan: VocabPlan) -> None:
    """Keep only the kept rows of the word embedding table (same order), and update the config to match."""
    if model.get_output_embeddings() is not None:
        raise StageError(
            "prune: vocabulary trimming of a model with an output (LM) embedding is not supported."
        )
    old = model.get_input_embeddings()
    pad = getattr(model.config, "pad_token_id", None)
    new_pad = vocab_plan.new_id.get(pad) if pad is not None else None
    new = torch.nn.Embedding(len(vocab_plan.kept), old.embedding_dim, padding_idx=new_pad)
    new.weight.data = old.weight.data[torch.tensor(vocab_plan.kept)].clone()
    model.set_input_embeddings(new)
    model.config.vocab_size = len(vocab_plan.kept)
    if pad is not None:
        model.config.pad_token_id = new_pad


def _tokens(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[str]]:
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    return [e.tokens for e in encoded.encodings]


def identical_tokenization(before: Any, after: Any, texts: Sequence[str], max_length: int) -> np.ndarray:
    """Per text: whether both tokenizers give the same token strings (as the model sees them, truncated)."""
    old, new = _tokens(before, texts, max_length), _tokens(after, texts, max_length)
    return np.array([a == b for a, b in zip(old, new, strict=True)], dtype=bool)


def compare(
    models: tuple[Any, Any], tokenizers: tuple[Any, Any], texts: Sequence[str], max_length: int
) -> dict[str, Any]:
    """Untrimmed vs trimmed on texts: how many tokenize differently, gain an [UNK], or change their prediction.

    Raises StageError if an identically tokenized text gets different logits: that would be a remapping bug.
    """
    (old_model, new_model), (old_tok, new_tok) = models, tokenizers
    old_tokens, new_tokens = _tokens(old_tok, texts, max_length), _tokens(new_tok, texts, max_length)
    same = np.array([a == b for a, b in zip(old_tokens, new_tokens, strict=True)], dtype=bool)
    unk = old_tok.unk_token
    new_unk = sum(b.count(unk) > a.count(unk) for a, b in zip(old_tokens, new_tokens, strict=True))
    old_logits = predict_logits(old_model, old_tok, texts, max_length, desc="untrimmed vocab")
    new_logits = predict_logits(new_model, new_tok, texts, max_length, desc="trimmed vocab")
    agree = old_logits.argmax(1) == new_logits.argmax(1)
    worst_same = float(np.abs(old_logits[same] - new_logits[same]).max()) if same.any() else None
    if worst_same is not None and worst_same > LOGIT_TOLERANCE:
        raise StageError(
            f"prune: an identically tokenized text gets logits {worst_same:.2e} apart after vocabulary trimming "
            "(the embedding rows and token ids are out of step); the model is not shipped."
        )
    return {
        "texts": len(texts),
        "tokenized_differently": int((~same).sum()),
        "texts_with_new_unknown_tokens": int(new_unk),
        "prediction_agreement": float(agree.mean()),
        "predictions_changed": int((~agree).sum()),
        "changed_among_differently_tokenized": int((~agree[~same]).sum()),
        "max_abs_logit_diff_identically_tokenized": worst_same,
    }
