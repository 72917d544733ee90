"""Export stage: the torch student to one ONNX graph (dynamic batch and sequence axes) plus a parity check.

The graph has two outputs: `logits`, and `features`, the last layer mean-pooled over the attention mask, which
the out-of-scope stage (edgepack.oos) turns into the bundle's `oos_score` and then removes.

TorchScript exporter (`dynamo=False`) with eager attention (SDPA for DistilBERT): the graphs ONNX Runtime's
optimizer fuses (edgepack.architectures lists what it fuses per family).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgepack import architectures, models
from edgepack.errors import StageError
from edgepack.recipe import ExportConfig

log = logging.getLogger(__name__)

PARITY_TEXTS = ("hi", "what is the pin number for my account?")
OUTPUTS = ("logits", "features")


@dataclass(frozen=True)
class ModelFacts:
    """What the later stages and the manifest need to know about the exported model."""

    architecture: str  # the config's model_type, e.g. "bert"
    layers: int
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int  # the longest input the position table serves

    @classmethod
    def of(cls, config: Any) -> ModelFacts:
        family = architectures.family_of(config.model_type)
        positions = family.max_positions(config) if family else config.max_position_embeddings
        return cls(
            architecture=config.model_type,
            layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            vocab_size=config.vocab_size,
            max_position_embeddings=positions,
        )


@dataclass
class ExportResult:
    onnx_path: Path
    input_names: list[str]
    model: ModelFacts
    tokenizer: Any  # the model's transformers tokenizer, for the stages that feed the graph
    record: dict[str, Any]


def _input_names(model: Any, tokenizer: Any) -> list[str]:
    """token_type_ids when the family takes them (BERT); for other families when the tokenizer makes them."""
    family = architectures.family_of(model.config.model_type)
    types = family.token_type_ids if family else "token_type_ids" in tokenizer.model_input_names
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if types else [])


def _encode(tokenizer: Any, texts: list[str], max_length: int, names: list[str]) -> dict[str, np.ndarray]:
    batch = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="np")
    return {k: batch[k].astype(np.int64) for k in names}


def parity_inputs(tokenizer: Any, max_length: int, names: list[str]) -> list[dict[str, np.ndarray]]:
    """Real inputs at the edges: one word, a typical query, and a text truncated at max_length."""
    long_text = " ".join(["please transfer money from my checking account to savings"] * max_length)
    return [_encode(tokenizer, [t], max_length, names) for t in (*PARITY_TEXTS, long_text)] + [
        _encode(tokenizer, [*PARITY_TEXTS, long_text], max_length, names)  # a padded batch
    ]


class WithFeatures(torch.nn.Module):
    """The classifier's logits and its last hidden layer mean-pooled over the attention mask."""

    def __init__(self, model: Any, zero_token_types: bool = False) -> None:
        super().__init__()
        self.model = model
        # Token types as zeros shaped like input_ids, when the graph takes none but the model adds a token-type
        # embedding (RoBERTa): its default slices a max-positions buffer, which ORT's symbolic shape inference
        # (static quantization) cannot broadcast against the sequence.
        self.zero_token_types = zero_token_types

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:  # models without token types (DistilBERT) take no such argument
            inputs["token_type_ids"] = token_type_ids
        elif self.zero_token_types:
            inputs["token_type_ids"] = torch.zeros_like(input_ids)
        out = self.model(**inputs, output_hidden_states=True)
        last = out.hidden_states[-1]
        mask = attention_mask.unsqueeze(-1).to(last.dtype)
        return out.logits, (last * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def run(model_dir: Path, config: ExportConfig, max_length: int, out: Path) -> ExportResult:
    import onnxruntime as ort
    from transformers import AutoConfig

    family = architectures.family_of(AutoConfig.from_pretrained(model_dir).model_type)
    attention = family.export_attention if family else "eager"
    model = models.load_classifier(model_dir, attention=attention).eval()
    tokenizer = models.load_tokenizer(model_dir)
    names = _input_names(model, tokenizer)
    sample = _encode(tokenizer, list(PARITY_TEXTS), max_length, names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {o: {0: "batch"} for o in OUTPUTS}
    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters
    wrapped = WithFeatures(model, zero_token_types=takes_types and "token_type_ids" not in names).eval()
    with torch.inference_mode():
        torch.onnx.export(
            wrapped,
            (),
            str(out),
            kwargs={k: torch.from_numpy(v) for k, v in sample.items()},
            input_names=names,
            output_names=list(OUTPUTS),
            dynamic_axes=axes,
            opset_version=config.opset,
            do_constant_folding=True,
            dynamo=False,
        )
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    diffs = []
    for feed in parity_inputs(tokenizer, max_length, names):
        with torch.inference_mode():
            expected = [t.numpy() for t in wrapped(**{k: torch.from_numpy(v) for k, v in feed.items()})]
        got = session.run(list(OUTPUTS), feed)
        diffs.append([float(np.abs(e - g).max()) for e, g in zip(expected, got, strict=True)])
    worst, worst_features = (max(column) for column in zip(*diffs, strict=True))
    record = {
        "opset": config.opset,
        "exporter": "torch.onnx (TorchScript)",
        "attention": attention,
        "inputs": names,
        "parity_max_abs_logit_diff": worst,
        "parity_max_abs_feature_diff": worst_features,
        "parity_tolerance": config.parity_tolerance,
        "fp32_bytes": out.stat().st_size,
    }
    if not max(worst, worst_features) <= config.parity_tolerance:
        raise StageError(
            f"export: ONNX Runtime logits or features differ from torch by {max(worst, worst_features):.2e} (> tolerance "
            f"{config.parity_tolerance:.0e}); the graph is not shipped. Check the model's custom code or raise "
            "[export] parity_tolerance if the difference is understood."
        )
    log.info("export: %s (parity %.2e)", out, worst)
    return ExportResult(out, names, ModelFacts.of(model.config), tokenizer, record)
