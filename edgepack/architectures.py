"""What differs between the encoder families edgepack builds: where the layers live, what a layer is made of
(for students from the teacher's layers and for structured pruning), the graph's inputs, and what ONNX Runtime's
transformer optimizer fuses.

Fusions, as measured with onnxruntime 1.32 on TorchScript exports (opset 17); Optimum's `ORTOptimizer` maps the
same model types to ORT's "bert" optimizer:

- BERT (eager attention): EmbedLayerNormalization 1, and per layer Attention 1, Gelu 1 and 2 LayerNormalization
  (after residual Adds; edgepack.optimize says why they are not fused into SkipLayerNormalization).
- DistilBERT: the same, when exported with SDPA attention. Its eager attention (`masked_fill` on the scores)
  matches ORT's DistilBERT pattern except for the mask check, so no Attention would be fused.
- RoBERTa and XLM-R (one graph): per layer as BERT; the embeddings are not fused, because ORT's
  EmbedLayerNormalization kernel counts positions from 0 while RoBERTa's start after the padding id
  (`match_position_embedding_roberta` is switched off in fusion_embedlayer.py).

Any other family is exported and quantized unfused (edgepack.optimize warns); the students made of the teacher's
layers and structured pruning need one of these families.
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from edgepack.errors import StageError


@dataclass(frozen=True)
class Layout:
    """Where the parts of one encoder layer are (dotted attribute paths from the layer)."""

    heads: str  # the layer's attention head count
    head_size: str
    attention_output: str  # the Linear that maps the heads' context back to the hidden size
    ffn_in: str
    ffn_out: str
    ffn_size_key: str  # the config key of the FFN width


BERT_LAYOUT = Layout(
    heads="attention.self.num_attention_heads",
    head_size="attention.self.attention_head_size",
    attention_output="attention.output.dense",
    ffn_in="intermediate.dense",
    ffn_out="output.dense",
    ffn_size_key="intermediate_size",
)


@dataclass(frozen=True)
class Family:
    """One encoder family; `layers` is the dotted path of its encoder layers from the model's `base_model`."""

    name: str
    model_types: tuple[str, ...]  # the configs' model_type values
    layers: str
    layout: Layout
    token_type_ids: bool  # whether the exported graph takes token_type_ids
    export_attention: str = "eager"  # the attention implementation whose export ORT fuses
    fuses_embeddings: bool = True  # whether ORT fuses the embeddings into EmbedLayerNormalization
    positions_after_padding: bool = False  # RoBERTa: position ids start at pad_token_id + 1
    ort_model_type: str = "bert"  # onnxruntime.transformers.optimizer's model_type
    layers_key: str = "num_hidden_layers"  # the config.json key of the encoder's layer count

    def expected_fusions(self, num_layers: int) -> dict[str, int]:
        """What ORT's optimizer makes of a `num_layers`-layer encoder of this family."""
        embeddings = {"EmbedLayerNormalization": 1} if self.fuses_embeddings else {}
        return embeddings | {
            "Attention": num_layers,
            # two per layer, and the embeddings' own when they are not fused
            "LayerNormalization": 2 * num_layers + (0 if self.fuses_embeddings else 1),
            "Gelu": num_layers,
        }

    def encoder_layers(self, model: Any) -> torch.nn.ModuleList:
        return operator.attrgetter(self.layers)(model.base_model)

    def set_encoder_layers(self, model: Any, blocks: list[Any]) -> None:
        """Replace the encoder's layers (the config's layer count is the caller's to set)."""
        _set(model.base_model, self.layers, torch.nn.ModuleList(blocks))

    def part(self, block: Any, name: str) -> Any:
        """The part of an encoder layer that the layout's field `name` points at."""
        return operator.attrgetter(getattr(self.layout, name))(block)

    def set_ffn(self, block: Any, ffn_in: torch.nn.Linear, ffn_out: torch.nn.Linear) -> None:
        _set(block, self.layout.ffn_in, ffn_in)
        _set(block, self.layout.ffn_out, ffn_out)

    def max_positions(self, config: Any) -> int:
        """The longest input the position table serves (RoBERTa's first pad_token_id + 1 rows are unused)."""
        offset = config.pad_token_id + 1 if self.positions_after_padding else 0
        return int(config.max_position_embeddings) - offset


def _set(root: Any, path: str, value: Any) -> None:
    parent, _, name = path.rpartition(".")
    setattr(operator.attrgetter(parent)(root) if parent else root, name, value)


ROBERTA = Family(
    "RoBERTa",
    ("roberta",),
    "encoder.layer",
    BERT_LAYOUT,
    token_type_ids=False,
    fuses_embeddings=False,
    positions_after_padding=True,
)
FAMILIES = (
    Family("BERT", ("bert",), "encoder.layer", BERT_LAYOUT, token_type_ids=True),
    Family(
        "DistilBERT",
        ("distilbert",),
        "transformer.layer",
        Layout(
            heads="attention.n_heads",
            head_size="attention.attention_head_size",
            attention_output="attention.out_lin",
            ffn_in="ffn.lin1",
            ffn_out="ffn.lin2",
            ffn_size_key="hidden_dim",
        ),
        token_type_ids=False,
        export_attention="sdpa",
        layers_key="n_layers",
    ),
    ROBERTA,
    replace(ROBERTA, name="XLM-R", model_types=("xlm-roberta",)),  # RoBERTa's graph, another vocabulary
)
SUPPORTED = ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES)


def family_of(model_type: str) -> Family | None:
    """The family of a config's model_type, None for one edgepack does not know."""
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def config_layers(config: dict[str, Any]) -> int | None:
    """The encoder's layer count in a config.json's values (under its family's key), None for a family edgepack
    does not know."""
    family = family_of(str(config.get("model_type", "")))
    if family is None or not isinstance(config.get(family.layers_key), int):
        return None
    return int(config[family.layers_key])


def folder_depth(folder: Path) -> tuple[int | None, Any]:
    """(the encoder's layer count from `folder`'s config.json, None for a family edgepack does not know; its
    model_type). Raises OSError or ValueError when config.json cannot be read as JSON."""
    values = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if not isinstance(values, dict):
        return None, None
    return config_layers(values), values.get("model_type")


def keep_encoder_layers(
    model: Any, layers: list[int], needed_by: str, instead: str, *, setting: str, owner: str = "the model"
) -> Any:
    """Keep only the encoder layers `layers` of `model` (in that order), in place: the embeddings and the head
    stay, the config's layer count (and any pruned heads) follow, each kept layer is renumbered. Returns
    `model`. The one place that keeps a list of layers: students made of the teacher's layers
    (edgepack.distill), a teacher fine-tuned from a slice of its base model's layers (edgepack.teacher), and
    layers dropped by structured pruning (edgepack.prune).

    An unknown family is refused as `require` refuses it (`needed_by`, `instead`); an index beyond the model's
    depth, a repeated or a negative one, with a StageError naming `setting` (e.g. "[distill] layers") and the
    depth of `owner` (what the message calls the model)."""
    family = require(model, needed_by, instead)
    blocks = family.encoder_layers(model)
    depth = len(blocks)
    if not layers or min(layers) < 0 or len(set(layers)) != len(layers):
        raise StageError(
            f"{setting} = {layers} must list distinct layer indices of {owner}'s {depth} layers "
            f"(0..{depth - 1})."
        )
    if max(layers) >= depth:
        raise StageError(
            f"{setting} = {layers} asks for layer {max(layers)}, but {owner} has {depth} layers "
            f"(0..{depth - 1})."
        )
    family.set_encoder_layers(model, [blocks[i] for i in layers])
    setattr(model.config, family.layers_key, len(layers))
    pruned = {int(k): v for k, v in (getattr(model.config, "pruned_heads", None) or {}).items()}
    model.config.pruned_heads = {layers.index(old): heads for old, heads in pruned.items() if old in layers}
    for new, block in enumerate(family.encoder_layers(model)):
        for module in block.modules():  # BERT's self-attention numbers itself (for key/value caches)
            if hasattr(module, "layer_idx"):
                module.layer_idx = new  # type: ignore[assignment]
    return model


def require(model: Any, needed_by: str, instead: str) -> Family:
    """The family of `model`, or a StageError saying that `needed_by` needs a known one and what to do
    `instead`."""
    model_type = model.config.model_type
    family = family_of(model_type)
    if family is None:
        raise StageError(
            f"{needed_by} needs an encoder of a known family ({SUPPORTED}); {type(model).__name__} is "
            f"model_type {model_type!r}. {instead}"
        )
    return family
