"""Turn whatever a caller passes as text into something safe to tokenize, or a clear error.

- Only `str` is accepted (None, bytes, numbers raise `TextTypeError`, a TypeError).
- Texts are capped at `CHARS_PER_TOKEN * max_length` characters before tokenizing: the tokenizer keeps only
  max_length tokens anyway, and a token almost always spans far fewer characters, so the cap changes nothing
  for real text while a 10 MB string costs no more than a 1 KB one. The answer for a longer text is, by
  definition, the answer for its capped prefix.
- Lone surrogates (which no UTF-8 tokenizer can take) become U+FFFD.
- Empty, whitespace-only and control-character texts are passed on. Such a text has nothing to classify (it
  tokenizes to special tokens only): a bundle with an out-of-scope label answers it with that label
  (rejected), one without answers whatever the model says about the special tokens alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from edgepack_runtime.errors import TextTypeError

CHARS_PER_TOKEN = 16
_SURROGATES = re.compile("[\ud800-\udfff]")


def clean_text(text: object, max_chars: int, where: str) -> str:
    """Check that `text` is a str, cap it at max_chars characters and replace lone surrogates."""
    if not isinstance(text, str):
        hint = (
            "; decode bytes first, e.g. data.decode('utf-8')" if isinstance(text, bytes | bytearray) else ""
        )
        raise TextTypeError(f"{where} expects str, got {type(text).__name__}{hint}")
    return replace_surrogates(text[:max_chars])


def replace_surrogates(text: str) -> str:
    """Lone surrogates (from surrogateescape decoding, or bad JSON) become U+FFFD."""
    return text if text.isascii() else _SURROGATES.sub("\ufffd", text)


def clean_texts(texts: Iterable[object], max_chars: int, caller: str) -> list[str]:
    """The same for a sequence of texts; a bare str or bytes is refused rather than split into characters."""
    if isinstance(texts, str | bytes | bytearray):
        raise TextTypeError(
            f"{caller}() takes a list of str, got a single {type(texts).__name__}; use predict()"
        )
    try:
        items = list(texts)
    except TypeError:
        raise TextTypeError(f"{caller}() takes a list of str, got {type(texts).__name__}") from None
    return [clean_text(t, max_chars, f"{caller}() item {i}") for i, t in enumerate(items)]
