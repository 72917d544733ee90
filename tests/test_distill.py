from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgepack.distill import student_from_teacher_layers
from edgepack.errors import StageError
from edgepack.models import load_classifier
from edgepack.training import distillation_loss


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
