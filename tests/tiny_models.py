"""The one writer of tiny random encoders for the build-side tests (conftest.py's fixtures and the tests that
need another shape or family): hidden size 32, FFN width 64, 64 positions; what differs is the family, the
tokenizer, the depth, the heads and whether torch is seeded first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The config's names for the hidden size, the layers, the heads and the FFN width.
_BERT_NAMES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
# family -> (config class, model class, size names), all in transformers
_FAMILIES = {
    "bert": ("BertConfig", "BertModel", _BERT_NAMES),
    "distilbert": ("DistilBertConfig", "DistilBertModel", ("dim", "n_layers", "n_heads", "hidden_dim")),
    "roberta": ("RobertaConfig", "RobertaModel", _BERT_NAMES),
    "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaModel", _BERT_NAMES),
    "electra": ("ElectraConfig", "ElectraModel", _BERT_NAMES),
}
# RoBERTa's graph (both tokenizer kinds): position ids start after the padding id (1), so 2 more positions.
_ROBERTA = {
    "max_position_embeddings": 66,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "type_vocab_size": 1,
}
_EXTRA: dict[str, dict[str, Any]] = {
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "electra": {"embedding_size": 32},  # ELECTRA's own default is 128
}


def save_tiny_encoder(
    folder: Path, family: str, tokenizer: Any, *, layers: int, heads: int, seed: int | None = 0
) -> Path:
    """Save `tokenizer` (a transformers fast tokenizer) and a random base model (no classification head) of
    `family` ("bert", "distilbert", "roberta", "xlm-roberta" or "electra") into `folder`, as safetensors:
    `layers` layers of `heads` heads (head size 32 / heads), its vocabulary the tokenizer's. `seed` seeds
    torch first; None leaves the random state as it is. Returns `folder`."""
    import torch
    import transformers

    config_class, model_class, names = _FAMILIES[family]
    hidden, depth, n_heads, ffn = names
    sizes = {"max_position_embeddings": 64, hidden: 32, depth: layers, n_heads: heads, ffn: 64}
    config = getattr(transformers, config_class)(
        vocab_size=len(tokenizer), **(sizes | _EXTRA.get(family, {}))
    )
    tokenizer.save_pretrained(folder)
    if seed is not None:
        torch.manual_seed(seed)
    getattr(transformers, model_class)(config).save_pretrained(folder, safe_serialization=True)
    return folder
