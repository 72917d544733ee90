from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from edgepack.cache import cache_key
from edgepack.distill import _key_settings, resolve_layers, student_from_teacher_layers, teacher_depth
from edgepack.errors import RecipeError, StageError
from edgepack.models import load_classifier
from edgepack.recipe import DistillConfig, auto_layers, load_recipe
from edgepack.training import distillation_loss, hidden_state_loss


def test_loss_matches_the_formula() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 5), torch.randn(4, 5)
    labels = torch.tensor([0, 1, 2, 3])
    alpha, t = 0.3, 2.5
    ce = torch.nn.functional.cross_entropy(student, labels)
    p_teacher = torch.softmax(teacher / t, dim=-1)
    log_p_student = torch.log_softmax(student / t, dim=-1)
    kl = (p_teacher * (p_teacher.log() - log_p_student)).sum(dim=-1).mean()  # batchmean
    expected = alpha * ce + (1 - alpha) * t**2 * kl
    assert torch.allclose(distillation_loss(student, teacher, labels, alpha, t), expected, atol=1e-6)
    # alpha = 1 is plain cross-entropy; a student equal to its teacher has zero KD term.
    assert torch.allclose(distillation_loss(student, teacher, labels, 1.0, t), ce)
    assert distillation_loss(teacher, teacher, labels, 0.0, t).abs() < 1e-6


def test_student_takes_the_chosen_teacher_layers(tiny_model: Path) -> None:
    teacher = load_classifier(tiny_model, ["a", "b", "c"])
    student = student_from_teacher_layers(teacher, [1])
    assert student.config.num_hidden_layers == 1 and len(student.bert.encoder.layer) == 1
    t_weight = teacher.bert.encoder.layer[1].attention.self.query.weight
    s_weight = student.bert.encoder.layer[0].attention.self.query.weight
    assert torch.equal(t_weight, s_weight) and t_weight.data_ptr() != s_weight.data_ptr()
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert teacher.config.num_hidden_layers == 2  # the teacher is untouched


def test_asking_for_a_missing_layer_is_refused(tiny_model: Path) -> None:
    teacher = load_classifier(tiny_model, ["a", "b"])
    with pytest.raises(StageError, match=r"asks for layer 5, but the teacher has 2 layers \(0..1\)"):
        student_from_teacher_layers(teacher, [0, 5])


def test_hidden_state_loss_is_the_mse_over_real_tokens() -> None:
    torch.manual_seed(0)
    teacher = [torch.randn(2, 3, 4) for _ in range(4)]  # embeddings + 3 layers
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    same = [teacher[0], teacher[2]]  # a 1-layer student copied from teacher layer 1
    assert hidden_state_loss(same, teacher, [1], mask) == 0
    moved = [teacher[0], teacher[2].clone()]
    moved[1][0, 2] += 100.0  # a padded position: ignored
    assert hidden_state_loss(moved, teacher, [1], mask) == 0
    moved[1][1, 0, 0] += 2.0  # one real value off by 2: 4 / (5 tokens x 4 dims), averaged over 2 pairs
    assert torch.isclose(hidden_state_loss(moved, teacher, [1], mask), torch.tensor(4 / 20 / 2))


def test_hidden_weight_changes_the_student_cache_key_only_when_on() -> None:
    plain = DistillConfig(layers=[0, 2])
    assert "hidden_weight" not in _key_settings(plain)  # students cached before the knob keep their keys
    assert _key_settings(DistillConfig(layers=[0, 2], hidden_weight=1.0))["hidden_weight"] == 1.0
    with pytest.raises(RecipeError, match=r"\[distill\] hidden_weight = 1.0 is invalid"):
        DistillConfig(student="some/checkpoint", hidden_weight=1.0)


def test_length_grouping_changes_the_cache_keys_only_when_on() -> None:
    from edgepack import prune

    assert "group_by_length" not in _key_settings(DistillConfig(layers=[0, 2]))
    assert _key_settings(DistillConfig(layers=[0, 2], group_by_length=True))["group_by_length"] is True
    pruning = load_recipe("clinc-pruned").prune
    assert "recovery_group_by_length" not in prune._key_settings(pruning)
    # The keys pruned students were cached under before the knob existed (cache_key(asdict(config)) then):
    assert cache_key(prune._key_settings(pruning)) == "a877305939af413b"
    grouped = load_recipe("clinc-pruned", {"prune.recovery_group_by_length": False}).prune
    assert prune._key_settings(grouped)["recovery_group_by_length"] is False
    with pytest.raises(RecipeError, match="group_by_length = 'yes' has the wrong type"):
        load_recipe("clinc-4l", {"distill.group_by_length": "yes"})


def test_length_grouped_batches_pad_less(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """group_by_length trains on batches of similar token lengths: far fewer pad tokens than random batches of
    the same texts."""
    import numpy as np
    from conftest import CORPUS

    from edgepack import training
    from edgepack.models import load_tokenizer

    pads: list[float] = []  # per batch: the share of its token positions that are padding
    collate = training.PadCollator.__call__

    def counting(self: training.PadCollator, features: list[dict]) -> dict:
        batch = collate(self, features)
        pads.append(1 - batch["attention_mask"].float().mean().item())
        return batch

    monkeypatch.setattr(training.PadCollator, "__call__", counting)
    tokenizer = load_tokenizer(tiny_model)
    rng = np.random.default_rng(0)
    words = " ".join(CORPUS).split()
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 25))) for _ in range(400)]
    logits = rng.standard_normal((len(texts), 3)).astype(np.float32)
    train = training.tokenized_dataset(tokenizer, texts, 32, rng.integers(0, 3, len(texts)), logits)

    def padding(grouped: bool) -> float:
        pads.clear()
        config = DistillConfig(layers=[0], epochs=1, batch_size=8, group_by_length=grouped)
        model = load_classifier(tiny_model, ["a", "b", "c"])
        training.train_student(model, tokenizer, train, config, tmp_path / str(grouped))
        assert len(pads) == 50
        return sum(pads) / len(pads)

    grouped, shuffled = padding(True), padding(False)
    assert grouped < shuffled / 3, (grouped, shuffled)


def test_length_grouping_reaches_every_stage(tmp_path: Path, tiny_data: Path, tiny_model: Path) -> None:
    """The teacher, the distillation and the recovery each use their own setting (the recovery [distill]'s
    unless [prune] recovery_group_by_length says otherwise), and the manifest records it."""
    from test_pipeline import _tiny_overrides

    from edgepack import teacher, training
    from edgepack.pipeline import build

    used: list[bool] = []
    original = training.training_arguments

    def spy(*args: object, **kwargs: object) -> object:
        result = original(*args, **kwargs)  # type: ignore[arg-type]
        used.append(result.group_by_length)
        return result

    base = _tiny_overrides(tmp_path, tiny_data, tiny_model) | {"search.trials": 0, "prune.ffn_fraction": 0.5}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "training_arguments", spy)
        patch.setattr(teacher, "training_arguments", spy)
        overrides = {"teacher.group_by_length": True, "distill.group_by_length": True}
        manifest = build(load_recipe("clinc-4l", base | overrides)).manifest
        assert used == [True, True, True]  # teacher, student, recovery
        assert manifest["distillation"]["settings"]["group_by_length"] is True
        assert manifest["pruning"]["recovery"]["group_by_length"] is True
        used.clear()
        shuffled: dict[str, object] = {"distill.group_by_length": True, "package.name": "tiny-2"}
        shuffled["prune.recovery_group_by_length"] = False
        manifest = build(load_recipe("clinc-4l", base | shuffled)).manifest
        assert used == [False, True, False]
        assert manifest["pruning"]["recovery"]["group_by_length"] is False


def test_distillation_with_the_hidden_state_loss(tmp_path: Path, tiny_data: Path, tiny_model: Path) -> None:
    from test_pipeline import _tiny_overrides

    from edgepack.pipeline import build
    from edgepack.recipe import load_recipe

    overrides = _tiny_overrides(tmp_path, tiny_data, tiny_model) | {
        "search.trials": 0,
        "distill.hidden_weight": 1.0,
        "prune.ffn_fraction": 0.5,
        "prune.drop_layers": [0],
        "distill.layers": [0, 1],
    }
    manifest = build(load_recipe("clinc-4l", overrides)).manifest
    assert manifest["distillation"]["settings"]["hidden_weight"] == 1.0
    assert manifest["pruning"]["recovery"]["hidden_weight"] == 1.0  # the recovery uses the same losses


@pytest.mark.parametrize(
    ("depth", "expected"),
    [
        (1, [0]),
        (2, [0]),  # one layer kept: the first
        (3, [0, 2]),
        (4, [0, 2, 3]),
        (6, [0, 2, 4, 5]),  # the default recipe's measured choice for its 6-layer teacher
        (12, [0, 2, 4, 5, 7, 8, 10, 11]),
    ],
)
def test_auto_layers_keep_about_two_thirds(depth: int, expected: list[int]) -> None:
    assert auto_layers(depth) == expected


def test_auto_layers_keep_the_first_and_the_last_evenly_spaced() -> None:
    for depth in range(1, 49):
        layers = auto_layers(depth)
        keep = max(1, round(2 * depth / 3))
        assert len(layers) == keep and layers[0] == 0 and layers == sorted(set(layers)), depth
        assert keep == 1 or layers[-1] == depth - 1, depth
        gaps = {b - a for a, b in itertools.pairwise(layers)}
        assert not gaps or max(gaps) - min(gaps) <= 1, f"{depth}: gaps {gaps} are not even"
    with pytest.raises(ValueError, match="at least one layer"):
        auto_layers(0)


def _config_only(folder: Path, values: dict) -> Path:
    """A folder with nothing but a config.json: all that resolving "auto" reads."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(values))
    return folder


def test_auto_layers_resolve_to_the_cache_key_of_their_list(tmp_path: Path) -> None:
    bert12 = _config_only(tmp_path / "bert12", {"model_type": "bert", "num_hidden_layers": 12})
    distilbert6 = _config_only(tmp_path / "distilbert6", {"model_type": "distilbert", "n_layers": 6})
    assert teacher_depth(bert12) == 12 and teacher_depth(distilbert6) == 6
    twelve = resolve_layers(DistillConfig(layers="auto", alpha=0.3), bert12)
    assert twelve == DistillConfig(layers=[0, 2, 4, 5, 7, 8, 10, 11], alpha=0.3)
    assert _key_settings(twelve) == _key_settings(DistillConfig(layers=[0, 2, 4, 5, 7, 8, 10, 11], alpha=0.3))
    generic = load_recipe("generic", {"data.source": "x"}).distill
    clinc = load_recipe("clinc-4l").distill
    assert generic.layers == "auto" and clinc.layers == [0, 2, 4, 5]
    six = resolve_layers(generic, distilbert6)
    assert six == clinc
    # The key students were cached under before "auto" existed (the generic recipe's explicit [0, 2, 4, 5]):
    assert cache_key(_key_settings(six)) == cache_key(_key_settings(clinc)) == "af3c6c9dba1c6331"
    explicit = DistillConfig(layers=[1])
    assert resolve_layers(explicit, bert12) is explicit, "an explicit list is used as it is"
    with pytest.raises(ValueError, match="resolved from the teacher"):
        _ = DistillConfig(layers="auto").layer_list


def test_a_bad_layers_string_is_refused() -> None:
    expected = r"\[distill\] layers = 'all' is invalid: expected a non-empty list of .* or \"auto\""
    with pytest.raises(RecipeError, match=expected):
        DistillConfig(layers="all")
    with pytest.raises(RecipeError, match=expected):
        DistillConfig(student="some/checkpoint", layers="all")
    with pytest.raises(RecipeError, match=expected):
        load_recipe("generic", {"data.source": "x", "distill.layers": "all"})
