"""Token lengths of the data under the teacher's tokenizer: the max_length that `[data] max_length = "auto"`
stands for, and how many texts of each split a max_length truncates.

"auto" is the AUTO_PERCENTILE-th percentile of the training texts' token lengths (special tokens included),
rounded up, at least MIN_LENGTH and at most the model's limit (its position table, and 512). Lengths are
counted without truncation, so a text is truncated when its length exceeds max_length.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import RecipeError

log = logging.getLogger(__name__)

AUTO = "auto"
AUTO_PERCENTILE = 99
MIN_LENGTH = 8  # the smallest max_length a recipe accepts
MAX_LENGTH = 512  # the largest ([data] max_length's range)


def model_limit(model_dir: Path, tokenizer: Any) -> int:
    """The longest input the model at `model_dir` serves: its position table (RoBERTa's minus the rows
    before the padding id), its `tokenizer`'s model_max_length when that is set, and MAX_LENGTH."""
    from transformers import AutoConfig

    from edgepack import architectures

    config = AutoConfig.from_pretrained(model_dir)
    family = architectures.family_of(config.model_type)
    positions = getattr(config, "max_position_embeddings", MAX_LENGTH)
    if family is not None:
        positions = family.max_positions(config)
    limit = min(int(positions), MAX_LENGTH)
    stated = getattr(tokenizer, "model_max_length", None)
    if isinstance(stated, int) and MIN_LENGTH <= stated < limit:  # unset it is ~1e30
        limit = stated
    return limit


def token_lengths(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """Every text's length in tokens, special tokens included, untruncated."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return np.array([len(e.ids) for e in backend.encode_batch(list(texts))], dtype=np.int64)


def percentiles(lengths: np.ndarray) -> dict[str, int]:
    return {
        **{f"p{q}": int(np.ceil(np.percentile(lengths, q))) for q in (50, 90, 95, AUTO_PERCENTILE)},
        "max": int(lengths.max()),
    }


def choose(setting: int | str, train_lengths: np.ndarray, limit: int) -> tuple[int, str]:
    """The max_length for `setting` (a number, or "auto") and how it was chosen."""
    if setting == AUTO:
        wanted = int(np.ceil(np.percentile(train_lengths, AUTO_PERCENTILE)))
        value = max(MIN_LENGTH, min(wanted, limit))
        bounded = f", capped at the model's {limit}" if wanted > limit else ""
        bounded += f", raised to the minimum {MIN_LENGTH}" if wanted < MIN_LENGTH else ""
        return value, (
            f"auto: the {AUTO_PERCENTILE}th percentile of the training texts' token lengths ({wanted}){bounded}"
        )
    assert isinstance(setting, int)
    if setting > limit:
        raise RecipeError(
            f"[data] max_length = {setting} is more than the teacher serves ({limit} tokens): use {limit} or "
            f'less, or max_length = "auto".'
        )
    return setting, "the recipe's"


def measure(
    setting: int | str, texts: Mapping[str, Sequence[str]], tokenizer: Any, limit: int
) -> tuple[int, dict[str, Any]]:
    """The max_length and the data record's part about lengths: how it was chosen, the training texts'
    length percentiles and, per split, how many texts it truncates (warned about when any)."""
    lengths = {split: token_lengths(tokenizer, split_texts) for split, split_texts in texts.items()}
    value, rule = choose(setting, lengths["train"], limit)
    truncated = {split: int((v > value).sum()) for split, v in lengths.items()}
    record = {
        "max_length": value,
        "max_length_rule": rule,
        "model_limit": limit,
        "token_lengths": {split: percentiles(v) for split, v in lengths.items()},
        "truncated": truncated,
    }
    log.info("data: max_length %d (%s)", value, rule)
    if any(truncated.values()):
        shown = ", ".join(f"{n} of {len(lengths[s])} {s}" for s, n in truncated.items())
        # "auto" already keeps 99% of the training texts whole: only a fixed, larger value keeps more.
        fix = (
            "set [data] max_length to a number"
            if setting == AUTO
            else 'raise [data] max_length or set "auto"'
        )
        log.warning(
            "data: max_length %d truncates %s texts (their end is not seen); to keep more, %s (up to %d)",
            value,
            shown,
            fix,
            limit,
        )
    return value, record
