"""The prune stage on tiny models: removed structure (shapes), graphs that still export, fuse and quantize,
vocabulary trimming that keeps in-vocabulary tokenization and predictions, and refused knob values."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from edgepack_runtime import Classifier
from edgepack_runtime.bundle import verify_bundle
from tiny_models import save_tiny_encoder

from edgepack import export, graphs, models, optimize, package, prune, quantize, teacher, vocab
from edgepack.cache import Cache
from edgepack.data import load_splits
from edgepack.errors import RecipeError, StageError
from edgepack.pipeline import STAGES, build
from edgepack.recipe import (
    EXPORT_ONLY,
    DataConfig,
    DistillConfig,
    ExportConfig,
    OptimizeConfig,
    PruneConfig,
    TeacherConfig,
    load_recipe,
)
from edgepack.targets import QuantizeConfig
from edgepack.training import DistillResult, TeacherResult, predict_logits

MAX_LENGTH = 32


@pytest.fixture(scope="module")
def taught(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, tiny_model: Path) -> TeacherResult:
    """A fine-tuned 3-layer, 4-head (head size 8) BERT on the tiny data: room for uneven head pruning."""
    base = tmp_path_factory.mktemp("base-4-heads")
    save_tiny_encoder(base, "bert", models.load_tokenizer(tiny_model), layers=3, heads=4)
    splits = load_splits(DataConfig(source=str(tiny_data)))
    settings = TeacherConfig(model=str(base), epochs=3, learning_rate=1e-3, batch_size=8)
    return teacher.run(splits, settings, MAX_LENGTH, Cache(tmp_path_factory.mktemp("cache")))


def _distilled(taught: TeacherResult) -> DistillResult:
    """The fine-tuned model stands in for a distilled student, with the settings recovery reuses."""
    settings = DistillConfig(epochs=1, learning_rate=1e-3, batch_size=8)
    record = {"settings": asdict(settings), "validation_score": None, "cache_key": "fine-tuned"}
    return DistillResult(taught.model_dir, settings, record)


def _run(taught: TeacherResult, out: Path, **knobs: Any) -> prune.PruneResult:
    return prune.run(taught, _distilled(taught), PruneConfig(**knobs), MAX_LENGTH, Cache(out / "cache"))


def _export_fuse_quantize(model_dir: Path, work: Path) -> tuple[dict, dict, dict]:
    exported = export.run(model_dir, ExportConfig(), MAX_LENGTH, work / "m.onnx")
    fused = optimize.run(exported.onnx_path, exported.model.layers, OptimizeConfig(), work / "f.onnx")
    quantized = quantize.quantize_graph(fused.onnx_path, QuantizeConfig.avx2(), [], work / "q.onnx")
    return exported.record, fused.record, quantized


def test_nothing_enabled_passes_the_student_through(tmp_path: Path, taught: TeacherResult) -> None:
    result = _run(taught, tmp_path)
    assert result.model_dir == taught.model_dir and result.record is None
    assert not (tmp_path / "cache").exists()
    # The 4-layer recipe does not prune; the default does.
    assert not load_recipe("clinc-4l").prune.enabled and load_recipe("clinc").prune.enabled
    assert STAGES.index("prune") == STAGES.index("distill") + 1


def test_structured_pruning_shrinks_the_matrices(tmp_path: Path, taught: TeacherResult) -> None:
    result = _run(
        taught,
        tmp_path,
        drop_layers=[1],
        heads_fraction=0.5,
        ffn_fraction=0.5,
        multiple_of=16,
        recovery_epochs=1,
    )
    record = result.record
    assert record is not None
    model = models.load_classifier(result.model_dir)  # the saved folder loads back with the pruned shapes
    blocks = model.bert.encoder.layer
    assert len(blocks) == 2 and model.config.num_hidden_layers == 2
    heads = [b.attention.self.num_attention_heads for b in blocks]
    assert sum(heads) == 4 and min(heads) >= 1  # 4 of 8 heads removed, every layer keeps one
    for block, n in zip(blocks, heads, strict=True):
        for linear in (block.attention.self.query, block.attention.self.key, block.attention.self.value):
            assert tuple(linear.weight.shape) == (8 * n, 32)
        assert tuple(block.attention.output.dense.weight.shape) == (32, 8 * n)
        assert tuple(block.intermediate.dense.weight.shape) == (32, 32)  # 64 -> 32 neurons
        assert tuple(block.output.dense.weight.shape) == (32, 32)
    assert model.config.intermediate_size == 32
    assert record["before"] == {
        "layers": 3,
        "heads": [4, 4, 4],
        "intermediate_size": [64, 64, 64],
        "vocab_size": len(models.load_tokenizer(taught.model_dir)),
        "parameters": record["parameters"]["before"],
    }
    assert record["after"]["heads"] == heads and record["after"]["intermediate_size"] == [32, 32]
    assert record["parameters"]["after"] == sum(p.numel() for p in model.parameters())
    assert record["parameters"]["after"] < record["parameters"]["before"]
    assert record["layers"]["dropped"] == [1]
    assert record["heads"]["removed"] == 4 and record["ffn"]["kept"] == 32
    assert set(record["validation_score"]) == {"distilled", "pruned", "recovered"}
    assert record["reload_max_abs_logit_diff"] < 1e-5

    exported, fused, quantized = _export_fuse_quantize(result.model_dir, tmp_path)
    assert exported["parity_max_abs_logit_diff"] < 1e-4
    assert fused["complete"] and fused["fused_operators"]["Attention"] == 2
    assert {k: fused["fused_operators"][k] for k in fused["expected"]} == optimize.expected_fusions(2)
    assert quantized["op_counts"].get("QAttention") == 2
    assert quantized["quantized_matmuls"] >= 2 * 3  # per layer: QAttention, attention output, two FFN MatMuls


def test_uneven_heads_per_layer_still_fuse(tmp_path: Path, taught: TeacherResult) -> None:
    """ONNX Runtime's fuser reads num_heads per Attention node, so layers may keep different head counts."""
    model = models.load_classifier(taught.model_dir)
    model.prune_heads({0: [0, 1, 2], 1: [3], 2: [1, 2]})
    folder = tmp_path / "uneven"
    model.save_pretrained(folder, safe_serialization=True)
    models.load_tokenizer(taught.model_dir).save_pretrained(folder)
    _, fused, quantized = _export_fuse_quantize(folder, tmp_path)
    assert fused["complete"] and fused["fused_operators"]["Attention"] == 3

    import onnx

    graph = onnx.load(str(tmp_path / "f.onnx")).graph
    num_heads = [
        a.i for n in graph.node if n.op_type == "Attention" for a in n.attribute if a.name == "num_heads"
    ]
    assert sorted(num_heads) == [1, 2, 3]
    assert quantized["op_counts"].get("QAttention") == 3
    # The fused Attention kernels compute what torch computes (their width is below the hidden size now).
    texts = taught.splits.texts["test"]
    tokenizer = models.load_tokenizer(folder)
    expected = predict_logits(models.load_classifier(folder), tokenizer, texts, MAX_LENGTH)
    fused_logits = graphs.graph_logits(tmp_path / "f.onnx", tokenizer, texts, MAX_LENGTH)
    np.testing.assert_allclose(fused_logits, expected, atol=1e-4)


def test_every_layer_keeps_a_head(
    tmp_path: Path, taught: TeacherResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Global ranking over per-layer normalised scores, with a floor of one head per layer."""
    real = prune._importance
    # After L2 normalisation layer 0 is ~[0.498, 0.498, 0.498, 0.503]; layers 1 and 2 [0.3, 0.3, 0.51, 0.75].
    scores = [np.array([1, 1, 1, 1.01]), np.array([0.3, 0.3, 0.51, 0.748]), np.array([0.3, 0.3, 0.51, 0.748])]

    def fixed(model: Any, batches: Any, settings: Any, unit: Any) -> list[np.ndarray]:
        real(model, batches, settings, unit)
        return (
            [s.copy() for s in scores] if unit is prune._head_unit else real(model, batches, settings, unit)
        )

    monkeypatch.setattr(prune, "_importance", fixed)
    result = _run(taught, tmp_path, heads_fraction=0.67, recovery_epochs=0)  # 8 of 12 heads
    assert result.record is not None
    # Without the floor, layer 0's last head (0.503) would go before the 0.51 heads.
    assert result.record["heads"]["removed_per_layer"] == {"0": [0, 1, 2], "1": [0, 1, 2], "2": [0, 1]}
    assert result.record["after"]["heads"] == [1, 1, 2]


def test_head_importance_is_the_gradient_of_a_head_mask(taught: TeacherResult) -> None:
    """Masking each head's context (our hook) gives the same gradient as transformers' own head_mask."""
    model = models.load_classifier(taught.model_dir).eval()
    tokenizer = models.load_tokenizer(taught.model_dir)
    settings = DistillConfig(batch_size=1)
    texts = taught.splits.texts["train"][:3]
    batches = []
    for i, text in enumerate(texts):
        batch = dict(tokenizer([text], return_tensors="pt"))
        batch["labels"] = torch.tensor([int(taught.splits.label_ids["train"][i])])
        batch["teacher_logits"] = torch.from_numpy(taught.logits["train"][i : i + 1])
        batches.append(batch)
    ours = prune._importance(model, batches, settings, prune._head_unit)
    expected = np.zeros((3, 4))
    for batch in batches:
        head_mask = torch.ones(3, 4, requires_grad=True)
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "teacher_logits")}
        logits = model(**inputs, head_mask=head_mask).logits
        loss = prune.distillation_loss(logits, batch["teacher_logits"], batch["labels"], 0.5, 4.0)
        expected += torch.autograd.grad(loss, head_mask)[0].abs().numpy()
    np.testing.assert_allclose(np.stack(ours), expected / 3, rtol=1e-4, atol=1e-7)
    assert np.stack(ours).min() > 0


def test_keep_layers_drops_the_layer_that_costs_least(tmp_path: Path, taught: TeacherResult) -> None:
    result = _run(taught, tmp_path, keep_layers=1, recovery_epochs=0)
    assert result.record is not None
    steps = result.record["layers"]["steps"]
    assert len(steps) == 2 and result.record["after"]["layers"] == 1
    first = steps[0]
    assert first["dropped"] == int(np.argmin(first["loss_without"])) and len(first["loss_without"]) == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"prune.heads_fraction": 1.5},
            r"\[prune\] heads_fraction = 1.5 is invalid: expected a share in \[0, 1\)",
        ),
        ({"prune.heads_fraction": -0.1}, r"\[prune\] heads_fraction = -0.1 is invalid"),
        (
            {"prune.ffn_fraction": 1.0},
            r"\[prune\] ffn_fraction = 1.0 is invalid: expected a share in \[0, 1\)",
        ),
        (
            {"prune.drop_layers": [0, 1, 2, 3]},
            r"\[prune\] drop_layers = \[0, 1, 2, 3\] is invalid: expected indices of the student's 4 layers "
            r"\(0..3\) leaving at least one \(\[distill\] layers = \[0, 2, 4, 5\]\)",
        ),
        ({"prune.drop_layers": [7]}, r"\[prune\] drop_layers = \[7\] is invalid"),
        ({"prune.keep_layers": 5}, r"\[prune\] keep_layers = 5 is invalid: expected at most the student's 4"),
        (
            {"prune.keep_layers": 2, "prune.drop_layers": [0]},
            r"keep_layers = 2 is invalid: expected none when",
        ),
        ({"prune.multiple_of": 0}, r"\[prune\] multiple_of = 0 is invalid"),
        (
            {"prune.vocab": "tiny"},
            r"\[prune\] vocab = 'tiny' is invalid: expected one of \['full', 'train'\]",
        ),
        ({"prune.recovery_epochs": -1}, r"\[prune\] recovery_epochs = -1 is invalid"),
    ],
)
def test_bad_knobs_are_refused_with_key_and_value(overrides: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        load_recipe("clinc-4l", overrides)


def test_knobs_the_student_cannot_take_are_refused(tmp_path: Path, taught: TeacherResult) -> None:
    with pytest.raises(
        RecipeError, match=r"drop_layers = \[0, 1, 2\] is invalid: .* 3 layers .*distilled student"
    ):
        _run(taught, tmp_path, drop_layers=[0, 1, 2])
    with pytest.raises(StageError, match=r"heads_fraction = 0.95 removes 11 of the student's 12 heads"):
        _run(taught, tmp_path, heads_fraction=0.95)
    with pytest.raises(StageError, match=r"multiple_of = 128 is larger than the student's FFN width 64"):
        _run(taught, tmp_path, ffn_fraction=0.5, multiple_of=128)
    assert prune.kept_width(1536, 0.5, 16) == 768 and prune.kept_width(64, 0.1, 16) == 64
    assert prune.kept_width(64, 0.9, 32) == 32  # never below one multiple


@pytest.fixture(scope="module")
def trimmed(tmp_path_factory: pytest.TempPathFactory, taught: TeacherResult) -> prune.PruneResult:
    return _run(taught, tmp_path_factory.mktemp("trimmed"), vocab="train")


def test_vocabulary_trimming_keeps_training_text_identical(
    trimmed: prune.PruneResult, taught: TeacherResult
) -> None:
    before_tok = models.load_tokenizer(taught.model_dir)
    after_tok = models.load_tokenizer(trimmed.model_dir)
    assert after_tok.is_fast and type(after_tok) is type(before_tok)
    record = trimmed.record
    assert record is not None
    size = record["vocab"]["after"]
    assert len(after_tok) == size < record["vocab"]["before"] == len(before_tok)
    model = models.load_classifier(trimmed.model_dir)
    assert model.config.vocab_size == size and model.bert.embeddings.word_embeddings.weight.shape[0] == size
    assert record["after"]["parameters"] < record["before"]["parameters"]
    # Special tokens survive, renumbered consistently everywhere.
    for name in ("cls_token", "sep_token", "pad_token", "unk_token", "mask_token"):
        token = getattr(after_tok, name)
        assert after_tok.convert_ids_to_tokens(after_tok.convert_tokens_to_ids(token)) == token
    assert after_tok("hi")["input_ids"][0] == after_tok.cls_token_id
    # In-vocabulary text: identical token strings, identical predictions.
    texts = taught.splits.texts["train"]
    for text in texts:
        assert after_tok.tokenize(text) == before_tok.tokenize(text)
    original = models.load_classifier(taught.model_dir)
    old = predict_logits(original, before_tok, texts, MAX_LENGTH)
    new = predict_logits(model, after_tok, texts, MAX_LENGTH)
    np.testing.assert_allclose(new, old, atol=1e-5)
    assert (new.argmax(1) == old.argmax(1)).all()


def test_trimmed_vocabulary_spells_every_word_the_full_one_could(
    trimmed: prune.PruneResult, taught: TeacherResult
) -> None:
    before_tok = models.load_tokenizer(taught.model_dir)
    after_tok = models.load_tokenizer(trimmed.model_dir)
    unseen = "the quick brown fox jumps over the lazy dog"  # in the tokenizer's corpus, not in the data
    old, new = before_tok.tokenize(unseen), after_tok.tokenize(unseen)
    assert old != new and len(new) > len(old)  # split into smaller pieces...
    assert "[UNK]" not in old and "[UNK]" not in new  # ...but never unknown
    assert before_tok.convert_tokens_to_string(old) == after_tok.convert_tokens_to_string(new) == unseen
    # A character the full vocabulary never had is unknown to both.
    snowman = "send money ☃"
    assert before_tok.tokenize(snowman) == after_tok.tokenize(snowman)
    assert after_tok.tokenize(snowman)[-1] == "[UNK]"
    # Every single-character piece is kept in both forms.
    full = set(before_tok.get_vocab())
    singles = {t for t in full if len(t) == 1 or (t.startswith("##") and len(t) == 3)}
    assert singles <= set(after_tok.get_vocab())


def test_trimmed_tokenizer_folder_is_consistent(trimmed: prune.PruneResult, taught: TeacherResult) -> None:
    from transformers import BertTokenizer

    folder = trimmed.model_dir
    after_tok = models.load_tokenizer(folder)
    lines = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert lines == [after_tok.convert_ids_to_tokens(i) for i in range(len(after_tok))]
    slow = BertTokenizer(str(folder / "vocab.txt"))  # the slow tokenizer reads vocab.txt alone
    for text in taught.splits.texts["test"]:
        assert slow.tokenize(text) == after_tok.tokenize(text)
        assert slow(text)["input_ids"] == after_tok(text)["input_ids"]
    decoder = json.loads((folder / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert {after_tok.convert_ids_to_tokens(int(k)) for k in decoder} == {
        v["content"] for v in decoder.values()
    }
    bundle_json = json.loads(package.bundle_tokenizer_json(after_tok, MAX_LENGTH))
    assert len(bundle_json["model"]["vocab"]) == len(after_tok) and bundle_json["padding"] is None


def test_special_tokens_are_renumbered_everywhere(tmp_path: Path) -> None:
    """A BERT-like layout ([PAD] 0, unused rows, then [UNK] [CLS] [SEP] [MASK]): every id-carrying file follows."""
    from transformers import AutoTokenizer, BertTokenizerFast

    pieces = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    alphabet = "[]01abcdehlmnorstuwy"  # every character has both single-character forms, as in BERT's vocab
    pieces += list(alphabet) + [f"##{c}" for c in alphabet] + ["hello", "world", "mars"]
    (tmp_path / "vocab.txt").write_text("\n".join(pieces) + "\n")
    original = BertTokenizerFast(str(tmp_path / "vocab.txt"))
    plan = vocab.plan(original, ["hello worlds"])
    assert plan.record["before"] == len(original) and plan.record["characters_without_single_piece"] == 0
    assert plan.kept[:5] == [0, 3, 4, 5, 6]  # the [unused] rows go, the specials stay
    folder = tmp_path / "trimmed"
    vocab.save_trimmed_tokenizer(original, plan, folder)
    trimmed = AutoTokenizer.from_pretrained(folder)
    assert (trimmed.pad_token_id, trimmed.unk_token_id, trimmed.cls_token_id, trimmed.sep_token_id) == (
        0,
        1,
        2,
        3,
    )
    assert trimmed("hello worlds").input_ids == [
        2,
        *trimmed.convert_tokens_to_ids(["hello", "world", "##s"]),
        3,
    ]
    assert trimmed.tokenize("hello worlds") == original.tokenize("hello worlds")
    assert trimmed.tokenize("mars") == ["m", "##a", "##r", "##s"] and original.tokenize("mars") == ["mars"]
    decoder = json.loads((folder / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert {int(k): v["content"] for k, v in decoder.items()} == {
        0: "[PAD]",
        1: "[UNK]",
        2: "[CLS]",
        3: "[SEP]",
        4: "[MASK]",
    }
    processor = json.loads((folder / "tokenizer.json").read_text())["post_processor"]
    assert json.dumps(processor).count("[CLS]") and trimmed.decode([2, 3]) == "[CLS] [SEP]"


def test_vocabulary_check_is_recorded_per_split(trimmed: prune.PruneResult, taught: TeacherResult) -> None:
    record = trimmed.record
    assert record is not None
    before_tok = models.load_tokenizer(taught.model_dir)
    after_tok = models.load_tokenizer(trimmed.model_dir)
    for split in ("validation", "test"):
        check = record["vocab"]["check"][split]
        texts = taught.splits.texts[split]
        same = vocab.identical_tokenization(before_tok, after_tok, texts, MAX_LENGTH)
        assert check["texts"] == len(texts) and check["tokenized_differently"] == int((~same).sum())
        assert check["texts_with_new_unknown_tokens"] == 0
        assert check["predictions_changed"] == check["changed_among_differently_tokenized"]
        assert check["prediction_agreement"] == 1 - check["predictions_changed"] / len(texts)
    assert record["vocab"]["training_texts_tokenized_identically"] == len(taught.splits.texts["train"])
    assert (
        record["vocab"]["chosen_from"] == "train" and record["vocab"]["characters_without_single_piece"] == 0
    )


def test_a_remapping_bug_would_be_caught(taught: TeacherResult) -> None:
    """compare() refuses when identically tokenized text gets other logits (embedding rows out of step)."""
    tokenizer = models.load_tokenizer(taught.model_dir)
    model = models.load_classifier(taught.model_dir).eval()
    shuffled = models.load_classifier(taught.model_dir).eval()
    weight = shuffled.bert.embeddings.word_embeddings.weight.data
    weight[:] = weight.flip(0)
    with pytest.raises(StageError, match="identically tokenized text gets logits"):
        vocab.compare((model, shuffled), (tokenizer, tokenizer), taught.splits.texts["test"], MAX_LENGTH)


def test_build_with_pruning_on(tmp_path: Path, tiny_data: Path, tiny_model: Path) -> None:
    from test_pipeline import _tiny_overrides

    overrides = _tiny_overrides(tmp_path, tiny_data, tiny_model) | {
        "search.trials": 0,
        "distill.layers": [0, 1],
        "prune.drop_layers": [1],
        "prune.heads_fraction": 0.5,
        "prune.ffn_fraction": 0.5,
        "prune.multiple_of": 16,
        "prune.vocab": "train",
        "prune.recovery_epochs": 1,
        "package.name": "tiny-pruned-int8",
    }
    bundle = build(load_recipe("clinc-4l", overrides)).path
    manifest = verify_bundle(bundle)
    pruning = manifest["pruning"]
    assert pruning["cached"] is False
    again = verify_bundle(build(load_recipe("clinc-4l", overrides | {"package.name": "again"})).path)
    assert again["pruning"]["cached"] is True and again["pruning"]["cache_key"] == pruning["cache_key"]
    assert pruning["before"]["layers"] == 2 and pruning["after"]["layers"] == 1
    assert pruning["after"]["heads"] == [1] and pruning["after"]["intermediate_size"] == [32]
    assert pruning["parameters"]["after"] < pruning["parameters"]["before"]
    assert pruning["vocab"]["after"] < pruning["vocab"]["before"]
    assert manifest["model"]["vocab_size"] == pruning["vocab"]["after"] and manifest["model"]["layers"] == 1
    fused = manifest["optimization"]
    assert fused["complete"] and fused["expected"] == optimize.expected_fusions(1)
    assert all(fused["fused_operators"][k] == v for k, v in fused["expected"].items())
    assert manifest["quantization"]["quantized_matmuls"] >= 3
    assert manifest["quantization"]["op_counts"].get("QAttention") == 1
    assert manifest["build_seconds"]["prune"] >= 0
    clf = Classifier.load(bundle, threads=1)
    tokenizer = json.loads((bundle / "tokenizer.json").read_text())
    assert len(tokenizer["model"]["vocab"]) == pruning["vocab"]["after"]
    assert clf.predict("what is my account balance").label in clf.labels


def test_the_teacher_itself_can_be_cut(tmp_path: Path, tiny_data: Path, tiny_model: Path) -> None:
    """`--recipe clinc-small --export-only` on a tiny 3-layer teacher: no distilled student; the prune stage
    keeps two of the teacher's own layers and recovers on the training text plus augmented copies."""
    from test_pipeline import _tiny_overrides

    base = tmp_path / "three-layers"
    save_tiny_encoder(base, "bert", models.load_tokenizer(tiny_model), layers=3, heads=4)
    overrides = _tiny_overrides(tmp_path, tiny_data, base) | {
        "distill.student": EXPORT_ONLY,
        "prune.recovery_epochs": 1,
        "prune.recovery_group_by_length": True,
        "prune.multiple_of": 16,
        "prune.vocab_keep_first": 0,  # the recipe keeps 10,000 frequent ids: all of the tiny vocabulary
        "augment.copies": 1,
    }
    manifest = verify_bundle(build(load_recipe("clinc-small", overrides)).path)
    assert manifest["distillation"]["student"] == EXPORT_ONLY and "search" not in manifest["distillation"]
    pruning = manifest["pruning"]
    assert (pruning["before"]["layers"], pruning["after"]["layers"]) == (3, 2)
    assert len(pruning["layers"]["dropped"]) == 1 and pruning["vocab"]["after"] < pruning["vocab"]["before"]
    recovery = pruning["recovery"]
    assert recovery["group_by_length"] is True
    assert recovery["transfer_texts"] == manifest["augmentation"]["augmented"] > 0
    assert manifest["oos_detection"]["method"] == "mahalanobis"
    # The teacher's cache key does not hold the [distill] settings the recovery trains with: the pruned one does.
    again = build(load_recipe("clinc-small", overrides | {"package.name": "again"})).manifest["pruning"]
    assert again["cached"] is True and again["cache_key"] == pruning["cache_key"]
    reseeded = overrides | {"distill.seed": 7, "package.name": "reseeded"}
    other = build(load_recipe("clinc-small", reseeded)).manifest["pruning"]
    assert other["cached"] is False and other["cache_key"] != pruning["cache_key"]


def test_trimmed_model_exports_with_parity(tmp_path: Path, trimmed: prune.PruneResult) -> None:
    """The trimmed folder exports (torch vs ONNX Runtime parity), fuses and quantizes like any student."""
    exported, fused, quantized = _export_fuse_quantize(trimmed.model_dir, tmp_path)
    assert exported["parity_max_abs_logit_diff"] < 1e-4 and fused["complete"]
    assert quantized["op_counts"].get("QAttention") == 3


def test_keep_first_drops_the_pieces_no_text_can_produce(tmp_path: Path) -> None:
    """BERT's [unusedN] rows sit among the first ids; the pre-tokenizer splits their brackets off, as it splits
    "...": no text reaches those rows, so they go."""
    from transformers import BertTokenizerFast

    alphabet = "[]01.abdeghilnorstuw"
    pieces = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *alphabet]
    pieces += [f"##{c}" for c in alphabet] + ["...", "world", "##orld", "hello"]
    (tmp_path / "vocab.txt").write_text("\n".join(pieces) + "\n")
    original = BertTokenizerFast(str(tmp_path / "vocab.txt"))
    plan = vocab.plan(original, ["hello"], keep_first=len(pieces))
    never = original.convert_tokens_to_ids(["[unused0]", "[unused1]", "..."])
    assert not set(never) & set(plan.kept)
    assert set(original.convert_tokens_to_ids(["world", "##orld", "."])) <= set(plan.kept)
    assert plan.record["first_ids_never_produced"] == 3 and plan.record["after"] == len(pieces) - 3
    texts = ["hello world...", "Hello World", "[unused0] wild", "0.1 toast"]
    folder = tmp_path / "trimmed"
    vocab.save_trimmed_tokenizer(original, plan, folder)
    trimmed = BertTokenizerFast.from_pretrained(folder)
    assert [trimmed.tokenize(t) for t in texts] == [original.tokenize(t) for t in texts]


def test_keep_first_keeps_the_most_frequent_pieces_too(tmp_path: Path) -> None:
    """BERT vocabularies list pieces by frequency; keep_first keeps the first ids so common unseen words survive."""
    from transformers import BertTokenizerFast

    alphabet = "abdeghilmnorstw"
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *alphabet, *[f"##{c}" for c in alphabet]]
    pieces += ["the", "world", "is", "mars", "hello"]  # "the", "world", "is" come first: the most frequent
    (tmp_path / "vocab.txt").write_text("\n".join(pieces) + "\n")
    original = BertTokenizerFast(str(tmp_path / "vocab.txt"))
    first = pieces.index("is") + 1
    plain, frequent = vocab.plan(original, ["hello"]), vocab.plan(original, ["hello"], keep_first=first)
    ids = original.convert_tokens_to_ids(["the", "world", "is", "mars"])
    assert not set(ids) & set(plain.kept)
    assert set(ids[:3]) <= set(frequent.kept) and ids[3] not in frequent.kept
    assert (
        frequent.record["kept_first_ids"] == first and frequent.record["after"] == plain.record["after"] + 3
    )
