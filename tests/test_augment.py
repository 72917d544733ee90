"""The augment stage: augmented copies of the training text, a user's unlabelled file, the teacher's cached
logits on them, the loss term they feed, and builds that use them where the recipe says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_pipeline import _tiny_overrides

from edgepack import augment, models, teacher
from edgepack.cache import Cache
from edgepack.data import DataError, LabelledSplits, load_splits
from edgepack.errors import RecipeError
from edgepack.pipeline import build
from edgepack.recipe import AugmentConfig, DataConfig, TeacherConfig, load_recipe
from edgepack.training import NO_LABEL, TeacherResult, distillation_loss, predict_logits

MAX_LENGTH = 32


@pytest.fixture(scope="module")
def splits(tiny_data: Path) -> LabelledSplits:
    return load_splits(DataConfig(source=str(tiny_data)))


@pytest.fixture(scope="module")
def taught(
    tmp_path_factory: pytest.TempPathFactory, splits: LabelledSplits, tiny_model: Path
) -> TeacherResult:
    settings = TeacherConfig(model=str(tiny_model), epochs=1, learning_rate=1e-3, batch_size=8)
    return teacher.run(splits, settings, MAX_LENGTH, Cache(tmp_path_factory.mktemp("cache")))


def test_copies_are_new_texts_made_of_training_words(splits: LabelledSplits) -> None:
    train = splits.texts["train"]
    copies = augment.augmented_texts(splits, AugmentConfig(copies=3), "[MASK]")
    assert copies and len(copies) <= 3 * len(train)
    assert len(set(copies)) == len(copies) and not set(copies) & set(train)
    words = {w for t in train for w in t.split()} | {"[MASK]"}
    assert all(set(c.split()) <= words for c in copies)
    assert copies == augment.augmented_texts(splits, AugmentConfig(copies=3), "[MASK]")  # seeded
    assert copies != augment.augmented_texts(splits, AugmentConfig(copies=3, seed=7), "[MASK]")


def test_each_operation_does_what_it_says(splits: LabelledSplits) -> None:
    masked = augment.augmented_texts(
        splits, AugmentConfig(copies=1, mask_prob=1, replace_prob=0, ngram_prob=0), "<m>"
    )
    assert masked and all(set(t.split()) == {"<m>"} for t in masked)
    cut = augment.augmented_texts(splits, AugmentConfig(copies=2, mask_prob=0, ngram_prob=1), "<m>")
    assert cut and all(len(t.split()) <= augment.MAX_NGRAM for t in cut)
    whole = {t.split()[0] for t in splits.texts["train"]}
    mixed = augment.augmented_texts(
        splits, AugmentConfig(copies=1, mask_prob=0, replace_prob=0, ngram_prob=0, mix_prob=1), "<m>"
    )
    # Halves of two texts: each starts like some training text and is none of them.
    assert mixed and all(t.split()[0] in whole for t in mixed)
    assert augment.augmented_texts(splits, AugmentConfig(copies=0), "<m>") == []


def test_unlabelled_file_is_read_stripped_and_deduplicated(tmp_path: Path) -> None:
    path = tmp_path / "queries.txt"
    path.write_text("  book a table \n\nbook a table\nwhat's my balance\n", encoding="utf-8")
    assert augment.read_unlabelled(path) == ["book a table", "what's my balance"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"fine\nnot \xe9 utf-8\n", "line 2: not UTF-8"),
        (b"\n  \n", "has no text"),
    ],
)
def test_a_bad_unlabelled_file_says_what_and_where(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "queries.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        augment.read_unlabelled(path)
    with pytest.raises(DataError, match="no such file"):
        augment.read_unlabelled(tmp_path / "missing.txt")


def test_transfer_logits_are_the_teachers_and_cached(
    tmp_path: Path, taught: TeacherResult, splits: LabelledSplits
) -> None:
    queries = tmp_path / "queries.txt"
    queries.write_text(
        "play some jazz\nwhat is the weather like\n" + splits.texts["train"][0], encoding="utf-8"
    )
    config = AugmentConfig(copies=2, unlabelled=str(queries))
    cache = Cache(tmp_path / "cache")
    first = augment.run(taught, config, MAX_LENGTH, cache)
    assert first is not None and first.record["cached"] is False
    assert first.record["unlabelled"] == 2  # the training text in the file is not labelled twice
    assert len(first.texts) == first.record["augmented"] + 2 == len(first.logits)
    expected = predict_logits(
        models.load_classifier(taught.model_dir),
        models.load_tokenizer(taught.model_dir),
        first.texts,
        MAX_LENGTH,
    )
    np.testing.assert_allclose(first.logits, expected, atol=1e-5)
    second = augment.run(taught, config, MAX_LENGTH, cache)
    assert second is not None and second.record["cached"] is True
    assert second.texts == first.texts and np.array_equal(second.logits, first.logits)
    assert augment.run(taught, AugmentConfig(), MAX_LENGTH, cache) is None


def test_a_transfer_set_with_no_new_text_round_trips_through_the_cache(
    tmp_path: Path, taught: TeacherResult
) -> None:
    unchanged = AugmentConfig(
        copies=1, mask_prob=0, replace_prob=0, ngram_prob=0, mix_prob=0
    )  # copies = originals
    cache = Cache(tmp_path / "cache")
    made = augment.run(taught, unchanged, MAX_LENGTH, cache)
    again = augment.run(taught, unchanged, MAX_LENGTH, cache)
    assert made is not None and again is not None and again.record["cached"] is True
    assert made.texts == again.texts == [] and again.logits.shape == (0, taught.splits.num_labels)


def test_unlabelled_rows_feed_only_the_distillation_term() -> None:
    torch.manual_seed(0)
    student, teacher_logits = torch.randn(4, 5), torch.randn(4, 5)
    labels = torch.tensor([0, 1, NO_LABEL, NO_LABEL])
    alpha, t = 0.3, 2.0
    kd = distillation_loss(student, teacher_logits, labels, 0.0, t)
    ce = torch.nn.functional.cross_entropy(student[:2], labels[:2])
    assert torch.allclose(
        distillation_loss(student, teacher_logits, labels, alpha, t), alpha * ce + (1 - alpha) * kd
    )
    none = torch.full((4,), NO_LABEL)
    assert torch.allclose(distillation_loss(student, teacher_logits, none, alpha, t), (1 - alpha) * kd)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"copies": -1}, "copies"),
        ({"mask_prob": 1.5}, "mask_prob"),
        ({"mask_prob": 0.6, "replace_prob": 0.6}, "replace_prob"),
        ({"use_in": ["export"]}, "use_in"),
    ],
)
def test_bad_augment_values_are_refused(values: dict, key: str) -> None:
    with pytest.raises(RecipeError, match=rf"\[augment\] {key} = "):
        AugmentConfig(**values)


def test_builds_use_the_transfer_text_where_the_recipe_says(
    tmp_path: Path, tiny_data: Path, tiny_model: Path
) -> None:
    overrides = _tiny_overrides(tmp_path, tiny_data, tiny_model) | {"search.trials": 0}
    plain = build(load_recipe("clinc-4l", overrides)).manifest
    assert plain["augmentation"] is None and plain["distillation"]["transfer_texts"] == 0
    # Used only by the prune stage: the distilled student is the cached one (its key did not change).
    prune_only = overrides | {
        "augment.copies": 2,
        "augment.use_in": ["prune"],
        "prune.ffn_fraction": 0.5,
        "prune.recovery_epochs": 1,
        "package.name": "prune-only",
    }
    pruned = build(load_recipe("clinc-4l", prune_only)).manifest
    assert pruned["distillation"]["cached"] is True
    transfer = pruned["augmentation"]["augmented"]
    assert transfer > 0 and pruned["pruning"]["recovery"]["transfer_texts"] == transfer
    # Used by the distillation: a new student that saw it; the transfer text itself comes from the cache.
    distilled = build(
        load_recipe("clinc-4l", overrides | {"augment.copies": 2, "package.name": "both"})
    ).manifest
    assert distilled["augmentation"]["cached"] is True
    assert distilled["distillation"]["cached"] is False
    assert distilled["distillation"]["transfer_texts"] == transfer
