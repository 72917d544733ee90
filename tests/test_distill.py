from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgepack.distill import _key_settings, student_from_teacher_layers
from edgepack.errors import RecipeError, StageError
from edgepack.models import load_classifier
from edgepack.recipe import DistillConfig
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
    manifest = json.loads((build(load_recipe("clinc", overrides)) / "manifest.json").read_text())
    assert manifest["distillation"]["settings"]["hidden_weight"] == 1.0
    assert manifest["pruning"]["recovery"]["hidden_weight"] == 1.0  # the recovery uses the same losses
