"""Recipes: one dataclass per stage, loaded from TOML, validated with messages that name the key and value.

A recipe is a TOML file with one table per stage (`[data]`, `[teacher]`, `[augment]`, `[distill]`, `[search]`, `[prune]`,
`[export]`, `[optimize]`, `[quantize]`, `[evaluate]`, `[package]`; `[quantize]` is `edgepack.targets.QuantizeConfig`,
beside the per-target presets it is completed from). Shipped recipes live in `edgepack/recipes/`
and are named by their file stem (`clinc`, `clinc-quick`, `clinc-bert`); any other path to a `.toml` file works
too.

Over 400 lines on purpose: every stage's config, with the checks that name a bad key and value, sits beside the
loader that builds them, so one file shows every key a recipe can hold.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.errors import RecipeError, as_enum, check, check_range
from edgepack.targets import TARGETS, QuantizeConfig

RECIPES_DIR = Path(__file__).parent / "recipes"
# The small budget of `--quick` and of the clinc-quick recipe (an overlay: stage tables only, no name).
QUICK_OVERLAY = str(RECIPES_DIR / "overlays" / "quick.toml")
# `--export-only`: the fine-tuned teacher bundled as it is (no distillation, no pruning, no augmented text).
EXPORT_ONLY_OVERLAY = str(RECIPES_DIR / "overlays" / "export-only.toml")
DEFAULT_RECIPE = "clinc"
GENERIC_RECIPE = "generic"  # what `edgepack build --data PATH` uses without --recipe


class VocabMode(enum.StrEnum):
    FULL = "full"  # keep the student's whole vocabulary
    TRAIN = "train"  # only the training text's pieces, every single-character piece, the special tokens


@dataclass
class DataConfig:
    """Where the labelled text comes from and how it is tokenized."""

    source: str = "../shared/data/clinc150"
    text_column: str = "text"
    label_column: str = "label"
    oos_label: str | None = "oos"  # the out-of-scope class, if the data has one
    max_length: int | str = 64  # tokens; "auto": from the training texts' token lengths (edgepack.lengths)
    max_train_samples: int | None = None  # cap the training split (quick recipes, tests)
    # A missing validation split is carved from train, a missing test split from what is left (stratified,
    # seeded: edgepack_runtime.splits); the manifest's data.carved says what was.
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0

    def __post_init__(self) -> None:
        check(bool(self.source), "data", "source", self.source, "a file, folder or Hub dataset name (--data)")
        expected = 'an integer in 8..512, or "auto"'
        if isinstance(self.max_length, str):
            check(self.max_length == "auto", "data", "max_length", self.max_length, expected)
        else:
            check(8 <= self.max_length <= 512, "data", "max_length", self.max_length, expected)
        if self.max_train_samples is not None:
            check(self.max_train_samples > 0, "data", "max_train_samples", self.max_train_samples, "> 0")
        for key in ("validation_fraction", "test_fraction"):
            value = getattr(self, key)
            check(0 < value < 0.5, "data", key, value, "a share of the training split in (0, 0.5)")


FINE_TUNE = ("auto", "always")
EXPORT_ONLY = "teacher"  # the [distill] student of the export-only path: the teacher itself is bundled
AUTO_LAYERS = "auto"  # [distill] / [teacher] layers chosen from the model's depth (auto_layers)
AUTO_LAYERS_RULE = "k = max(1, round(2N/3)): the first, the last and the rest evenly spaced (rounded up)"


def auto_layers(num_layers: int) -> list[int]:
    """The teacher layers `[distill] layers = "auto"` keeps of a `num_layers`-layer teacher (N): about two thirds,
    k = max(1, round(2N/3)), always the first (it reads the embeddings) and the last (it feeds the head), the
    others at evenly spaced positions i(N-1)/(k-1) rounded up; a one-layer student keeps the first.

    6 -> [0, 2, 4, 5] (the default recipe's measured choice), 12 -> [0, 2, 4, 5, 7, 8, 10, 11], 3 -> [0, 2],
    2 or 1 -> [0].
    """
    if num_layers < 1:
        raise ValueError(f"a teacher has at least one layer, got {num_layers}")
    keep = max(1, round(2 * num_layers / 3))
    if keep == 1:
        return [0]
    return [-(-i * (num_layers - 1) // (keep - 1)) for i in range(keep)]  # ceil in integers


def kept_layers(layers: list[int] | str | None, depth: int) -> list[int] | None:
    """The encoder layers `[teacher] layers` keeps of a `depth`-layer base model: None (all of them) when it is
    unset, "auto" resolved by auto_layers, a list as it is."""
    if layers is None:
        return None
    return auto_layers(depth) if isinstance(layers, str) else list(layers)  # the only string is "auto"


def kept_depth(layers: list[int] | str | None, depth: int | None) -> int | None:
    """The fine-tuned teacher's layer count when `[teacher] layers` is `layers` and its base model has `depth`
    layers (None: not known, which only a list does not need)."""
    if isinstance(layers, list):
        return len(layers)
    if depth is None:
        return None
    kept = kept_layers(layers, depth)
    return depth if kept is None else len(kept)


@dataclass
class TeacherConfig:
    """The teacher model and, when it has no head for these labels yet, how to fine-tune it.

    A checkpoint with a sequence-classification head whose id2label names the data's labels (in any order,
    after `label_map`) is used as it is, unless fine_tune = "always"; one whose labels differ is refused.
    """

    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    epochs: float = 5.0
    learning_rate: float = 1e-4
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_ratio: float = 0.0
    # Batches of similar token length (transformers' LengthGroupedSampler): on CLINC, random batches of 32 are
    # padded to 1.8x their tokens, grouped ones (megabatches of 50 sorted) to 1.03x. Off: random batches.
    group_by_length: bool = False
    seed: int = 42
    # "auto": fine-tune only a model without a head for the data's labels; "always": fine-tune that head too
    # (a head for other labels is then replaced rather than refused).
    fine_tune: str = "auto"
    # The checkpoint's labels (names such as LABEL_0, or ids) -> the data's: a table, or a JSON file's path.
    label_map: dict[str, str] | str | None = None
    # The base model's encoder layers fine-tuned (embeddings and head as they are): None = all of them, a list
    # of indices, or "auto" (auto_layers of its depth, as [distill] layers = "auto"). Needs fine-tuning: a
    # checkpoint whose head is used as it is keeps all its layers.
    layers: list[int] | str | None = None
    # More teachers, fine-tuned by this same recipe with these seeds (each cached as a single teacher): the
    # students learn from the log of all the teachers' mean probabilities. The student is still cut from, and
    # its hidden states matched to, the first teacher (seed). Each member costs one more fine-tuning.
    ensemble_seeds: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        check(self.fine_tune in FINE_TUNE, "teacher", "fine_tune", self.fine_tune, '"auto" or "always"')
        seeds = self.ensemble_seeds
        ok = all(type(s) is int for s in seeds) and len(set(seeds)) == len(seeds) and self.seed not in seeds
        expected = f"a list of distinct integer seeds other than seed ({self.seed}), or [] for one teacher"
        check(ok, "teacher", "ensemble_seeds", seeds, expected)
        if self.layers is not None:
            expected = (
                f'a non-empty list of distinct layer indices of the model, "{AUTO_LAYERS}" (about two thirds of '
                "its layers, the first and the last among them), or unset (all of its layers)"
            )
            if isinstance(self.layers, str):
                check(self.layers == AUTO_LAYERS, "teacher", "layers", self.layers, expected)
            else:
                ok = (
                    bool(self.layers)
                    and all(i >= 0 for i in self.layers)
                    and len(set(self.layers)) == len(self.layers)
                )
                check(ok, "teacher", "layers", self.layers, expected)
        if isinstance(self.label_map, dict):
            names = list(self.label_map.values())
            ok = bool(names) and all(names) and len(set(names)) == len(names)
            check(ok, "teacher", "label_map", self.label_map, "a table of distinct, non-empty label names")
        elif self.label_map is not None:
            expected = "a JSON file's path, or a table"
            check(bool(self.label_map), "teacher", "label_map", self.label_map, expected)
        check(0 < self.epochs <= 100, "teacher", "epochs", self.epochs, "a number in (0, 100]")
        check(
            0 < self.learning_rate < 1, "teacher", "learning_rate", self.learning_rate, "a number in (0, 1)"
        )
        check(self.batch_size >= 1, "teacher", "batch_size", self.batch_size, "an integer >= 1")
        check(0 <= self.warmup_ratio < 1, "teacher", "warmup_ratio", self.warmup_ratio, "a number in [0, 1)")


@dataclass
class DistillConfig:
    """The student and its distillation: loss = alpha*CE + (1-alpha)*T^2*KL(teacher/T || student/T)."""

    # "teacher-layers" (a subset of the teacher's layers), a model id/path, or "teacher": no student (the
    # teacher itself goes on: exported as it is, or cut by [prune] and its recovery; [search] is not run)
    student: str = "teacher-layers"
    # teacher layers kept when student="teacher-layers", or "auto": chosen from the teacher's depth when the
    # distill stage reads it (auto_layers); the stage passes on the resolved list
    layers: list[int] | str = field(default_factory=lambda: [0, 2, 4])
    alpha: float = 0.5
    temperature: float = 4.0
    epochs: float = 6.0
    learning_rate: float = 1e-4
    batch_size: int = 32
    seed: int = 42
    # Weight of the hidden-state loss: each student layer learns the output of the teacher layer it was copied
    # from (TinyBERT's layer mapping; needs student = "teacher-layers"). 0 = off.
    hidden_weight: float = 0.0
    # Batches of similar token length, as [teacher] group_by_length: the search trials, the final student and
    # (unless [prune] recovery_group_by_length says otherwise) the recovery after pruning.
    group_by_length: bool = False

    def __post_init__(self) -> None:
        check(0 <= self.alpha <= 1, "distill", "alpha", self.alpha, "a number in [0, 1]")
        check(
            0 <= self.hidden_weight <= 1000,
            "distill",
            "hidden_weight",
            self.hidden_weight,
            "a number in [0, 1000]",
        )
        check(0 < self.temperature <= 100, "distill", "temperature", self.temperature, "a number in (0, 100]")
        check(0 < self.epochs <= 100, "distill", "epochs", self.epochs, "a number in (0, 100]")
        check(
            0 < self.learning_rate < 1, "distill", "learning_rate", self.learning_rate, "a number in (0, 1)"
        )
        check(self.batch_size >= 1, "distill", "batch_size", self.batch_size, "an integer >= 1")
        expected = (
            f'a non-empty list of distinct teacher layer indices, or "{AUTO_LAYERS}" (about two thirds of the '
            "teacher's layers, the first and the last among them)"
        )
        if isinstance(self.layers, str):
            check(self.layers == AUTO_LAYERS, "distill", "layers", self.layers, expected)
        if self.student == "teacher-layers":
            if isinstance(self.layers, list):
                ok = (
                    bool(self.layers)
                    and all(i >= 0 for i in self.layers)
                    and len(set(self.layers)) == len(self.layers)
                )
                check(ok, "distill", "layers", self.layers, expected)
        else:
            expected = '0: a student not made of the teacher\'s layers has no layer to match (student = "teacher-layers")'
            check(self.hidden_weight == 0, "distill", "hidden_weight", self.hidden_weight, expected)

    @property
    def layer_list(self) -> list[int]:
        """The teacher layers kept, as a list: `"auto"` must have been resolved (edgepack.distill.resolve_layers)."""
        if isinstance(self.layers, str):
            raise ValueError(
                f'[distill] layers = "{self.layers}" is resolved from the teacher by the distill stage'
            )
        return self.layers


AUGMENT_STAGES = ("distill", "prune")


@dataclass
class AugmentConfig:
    """More text for the teacher to label than the training split (Tang et al. 2019; TinyBERT): augmented copies
    of the training texts and a user's unlabelled in-domain queries. The student learns the teacher's logits on
    it (the distillation term only; it has no labels). Off by default."""

    copies: int = 0  # augmented copies per training text; 0 = none
    unlabelled: str | None = None  # a UTF-8 text file, one query per line
    mask_prob: float = 0.1  # each word becomes the tokenizer's mask token
    replace_prob: float = 0.1  # each word becomes a word of the training text, drawn by frequency
    ngram_prob: float = 0.25  # only a random n-gram (1 to 5 words) of the copy is kept
    mix_prob: float = 0.1  # the copy is the first half of the text and the second half of another class's
    use_in: list[str] = field(
        default_factory=lambda: list(AUGMENT_STAGES)
    )  # the final distillation, recovery
    seed: int = 42

    def __post_init__(self) -> None:
        check(0 <= self.copies <= 100, "augment", "copies", self.copies, "an integer in 0..100 (0 = none)")
        for key in ("mask_prob", "replace_prob", "ngram_prob", "mix_prob"):
            value = getattr(self, key)
            check(0 <= value <= 1, "augment", key, value, "a probability in [0, 1]")
        check(
            self.mask_prob + self.replace_prob <= 1,
            "augment",
            "replace_prob",
            self.replace_prob,
            "at most 1 - mask_prob (each word is masked, replaced or kept)",
        )
        ok = set(self.use_in) <= set(AUGMENT_STAGES) and len(set(self.use_in)) == len(self.use_in)
        check(ok, "augment", "use_in", self.use_in, f"a list of distinct stages among {list(AUGMENT_STAGES)}")
        if self.unlabelled is not None:
            check(bool(self.unlabelled), "augment", "unlabelled", self.unlabelled, "a file path, or unset")

    @property
    def enabled(self) -> bool:
        return bool(self.use_in) and (self.copies > 0 or self.unlabelled is not None)

    def used_in(self, stage: str) -> bool:
        return self.enabled and stage in self.use_in


@dataclass
class SearchConfig:
    """Optuna search over the distillation's alpha, temperature, epochs and learning rate."""

    trials: int = 8  # 0 turns the search off and uses [distill] as given; a shared study's total
    timeout_minutes: float = 15.0
    train_fraction: float = 0.5  # trials train on this share of the training split (the final run uses all)
    alpha: list[float] = field(default_factory=lambda: [0.1, 0.9])
    temperature: list[float] = field(default_factory=lambda: [1.0, 10.0])
    epochs: list[int] = field(default_factory=lambda: [2, 6])
    learning_rate: list[float] = field(default_factory=lambda: [3e-5, 3e-4])
    pruner: str = "median"  # "median" or "none"
    storage: str | None = None  # e.g. sqlite:///study.db or postgresql://...: share one study across machines
    study_name: str | None = None  # with storage: None names it after the data, teacher and search space
    heartbeat_seconds: int = 30  # with storage: a trial silent for 3 beats (its worker died) is marked FAIL
    final: str = (
        "retrain"  # "retrain" the best trial's settings on the full training split, or "keep" its model
    )
    seed: int = 42

    def __post_init__(self) -> None:
        check(self.trials >= 0, "search", "trials", self.trials, "an integer >= 0")
        check(self.timeout_minutes > 0, "search", "timeout_minutes", self.timeout_minutes, "a number > 0")
        check(
            0 < self.train_fraction <= 1,
            "search",
            "train_fraction",
            self.train_fraction,
            "a number in (0, 1]",
        )
        check_range("search", "alpha", self.alpha, 0.0, 1.0)
        check_range("search", "temperature", self.temperature, 1e-3, 100.0)
        check_range("search", "epochs", [float(e) for e in self.epochs], 1, 100)
        check_range("search", "learning_rate", self.learning_rate, 1e-7, 1.0)
        check(self.pruner in ("median", "none"), "search", "pruner", self.pruner, '"median" or "none"')
        check(self.final in ("retrain", "keep"), "search", "final", self.final, '"retrain" or "keep"')
        check(
            1 <= self.heartbeat_seconds <= 3600,
            "search",
            "heartbeat_seconds",
            self.heartbeat_seconds,
            "an integer in 1..3600",
        )
        if self.storage is not None:
            from edgepack.study import check_storage_url

            check_storage_url(self.storage)


@dataclass
class PruneConfig:
    """Structured pruning of the distilled student, then a short recovery distillation. Everything is off by default.

    Only removed structure makes a CPU faster: heads, FFN neurons, layers and embedding rows are cut out of the
    matrices. Unstructured (magnitude) sparsity is not offered: ONNX Runtime runs zeroed weights at dense speed.
    """

    heads_fraction: float = 0.0  # share of all attention heads removed (gradient importance); 0 = off
    ffn_fraction: float = 0.0  # share of each layer's FFN neurons removed (|activation x gradient|); 0 = off
    multiple_of: int = 16  # the kept FFN width is a multiple of this (INT8 GEMM kernels like 16 / 32)
    drop_layers: list[int] = field(default_factory=list)  # student layer indices to remove
    keep_layers: int | None = None  # or: keep this many layers, dropping those whose removal costs least
    vocab: VocabMode = VocabMode.FULL  # "train": trim the embedding table to the training text's pieces
    # With vocab = "train", also keep the ids below this that text can produce (BERT lists pieces by frequency).
    vocab_keep_first: int = 0
    importance_samples: int = 512  # training examples used to score layers, heads and FFN neurons
    recovery_epochs: float = 1.0  # distillation from the teacher's cached logits after pruning; 0 = none
    recovery_learning_rate: float = 5e-5
    recovery_hidden_weight: float | None = None  # the recovery's hidden-state loss weight; None = [distill]'s
    recovery_group_by_length: bool | None = None  # the recovery's batches by length; None = [distill]'s

    def __post_init__(self) -> None:
        self.vocab = as_enum(VocabMode, self.vocab, "prune", "vocab")
        for key in ("heads_fraction", "ffn_fraction"):
            value = getattr(self, key)
            check(0 <= value < 1, "prune", key, value, "a share in [0, 1) (0 = off)")
        check(
            1 <= self.multiple_of <= 1024, "prune", "multiple_of", self.multiple_of, "an integer in 1..1024"
        )
        ok = all(i >= 0 for i in self.drop_layers) and len(set(self.drop_layers)) == len(self.drop_layers)
        check(ok, "prune", "drop_layers", self.drop_layers, "a list of distinct student layer indices")
        if self.keep_layers is not None:
            check(self.keep_layers >= 1, "prune", "keep_layers", self.keep_layers, "an integer >= 1")
            check(
                not self.drop_layers,
                "prune",
                "keep_layers",
                self.keep_layers,
                "none when drop_layers is set (use one of the two)",
            )
        check(
            self.vocab_keep_first >= 0, "prune", "vocab_keep_first", self.vocab_keep_first, "an integer >= 0"
        )
        check(self.importance_samples >= 1, "prune", "importance_samples", self.importance_samples, ">= 1")
        check(
            0 <= self.recovery_epochs <= 100,
            "prune",
            "recovery_epochs",
            self.recovery_epochs,
            "a number in [0, 100] (0 = no recovery)",
        )
        check(
            0 < self.recovery_learning_rate < 1,
            "prune",
            "recovery_learning_rate",
            self.recovery_learning_rate,
            "a number in (0, 1)",
        )
        if self.recovery_hidden_weight is not None:
            check(
                0 <= self.recovery_hidden_weight <= 1000,
                "prune",
                "recovery_hidden_weight",
                self.recovery_hidden_weight,
                "a number in [0, 1000], or unset (the distillation's)",
            )

    @property
    def structural(self) -> bool:
        """Whether layers, heads or FFN neurons are removed (what the recovery distillation is for)."""
        return bool(self.heads_fraction or self.ffn_fraction or self.drop_layers or self.keep_layers)

    @property
    def enabled(self) -> bool:
        return self.structural or self.vocab is VocabMode.TRAIN

    def check_layers(self, num_layers: int, where: str) -> None:
        """Refuse layer knobs that remove every layer of a `num_layers`-layer student (`where` says why)."""
        if self.drop_layers:
            ok = max(self.drop_layers) < num_layers and len(self.drop_layers) < num_layers
            expected = (
                f"indices of the student's {num_layers} layers (0..{num_layers - 1}) leaving at least one "
                f"({where})"
            )
            check(ok, "prune", "drop_layers", self.drop_layers, expected)
        if self.keep_layers is not None:
            expected = f"at most the student's {num_layers} layers ({where})"
            check(self.keep_layers <= num_layers, "prune", "keep_layers", self.keep_layers, expected)


@dataclass
class ExportConfig:
    opset: int = 17
    parity_tolerance: float = 1e-4  # max |logit difference| torch vs ONNX Runtime fp32

    def __post_init__(self) -> None:
        check(14 <= self.opset <= 23, "export", "opset", self.opset, "an integer in 14..23")
        check(self.parity_tolerance > 0, "export", "parity_tolerance", self.parity_tolerance, "a number > 0")


@dataclass
class OptimizeConfig:
    require_fusions: bool = True  # stop the build when attention / layer norm / GELU fusion did not happen


# The out-of-scope scores edgepack.oos can build into a bundle's graph.
OOS_METHODS = ("max_probability", "max_logit", "energy", "mahalanobis", "centroid_cosine")


@dataclass
class EvaluateConfig:
    """How the bundle tells out-of-scope texts (edgepack.oos), and how its accuracy is measured.

    oos_method: "auto" (the best on validation) or one of max_probability, max_logit, energy, mahalanobis,
    centroid_cosine. oos_threshold: "reject:Q" (reject a share Q of the in-scope validation texts; needs no
    out-of-scope examples), "auto" (maximise the mean of in-scope accuracy and out-of-scope recall on
    validation), "accuracy" (maximise validation accuracy), a number on the method's score, or "none".
    rejection_label: for data without an out-of-scope class, the answer to the texts the threshold rejects
    (labels.json gains it as a last label the model never predicts); unset, such data is answered by argmax.
    """

    batch_size: int = 64
    oos_method: str = "auto"
    oos_threshold: str | float | None = "reject:0.02"
    rejection_label: str | None = None

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, "evaluate", "batch_size", self.batch_size, "an integer >= 1")
        methods = ("auto", *OOS_METHODS)
        check(
            self.oos_method in methods, "evaluate", "oos_method", self.oos_method, f"one of {list(methods)}"
        )
        t = self.oos_threshold
        ok = (
            t is None
            or t in ("auto", "accuracy")
            or isinstance(t, int | float)
            or reject_share(t) is not None
        )
        expected = '"reject:Q" with Q in (0, 1), "auto", "accuracy", a number, or "none"'
        check(ok, "evaluate", "oos_threshold", t, expected)
        number = isinstance(t, int | float)
        why = 'a method other than "auto" when oos_threshold is a number (a number is on one method\'s score)'
        check(not (number and self.oos_method == "auto"), "evaluate", "oos_method", self.oos_method, why)
        if self.rejection_label is not None:
            check(bool(self.rejection_label), "evaluate", "rejection_label", "", "a label name, or unset")
            why = (
                '"reject:Q" or a number with a rejection_label: data that needs one has no out-of-scope '
                f"texts to choose an {t!r} threshold on"
            )
            check(number or reject_share(t) is not None, "evaluate", "oos_threshold", t, why)


def reject_share(rule: object) -> float | None:
    """Q of a "reject:Q" rule, when it is one with 0 < Q < 1."""
    if not isinstance(rule, str) or not rule.startswith("reject:"):
        return None
    try:
        share = float(rule.removeprefix("reject:"))
    except ValueError:
        return None
    return share if 0 < share < 1 else None


AUTO_NAME = "auto"


def bundle_name(source: str) -> str:
    """A bundle name for data at `source`: its folder's or file's name (a split file's folder's), or a Hub
    dataset's name and config, plus "-int8"."""
    path = Path(source.rstrip("/\\"))
    if path.exists():
        path = path.resolve()
        split_file = path.is_file() and path.stem.lower() in ("train", "validation", "val", "dev", "test")
        stem = path.parent.name if split_file else (path.name if path.is_dir() else path.stem)
    else:
        stem = source.rsplit("/", 1)[-1].replace(":", "-")
    return (re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "data") + "-int8"


@dataclass
class PackageConfig:
    name: str = "clinc-int8"  # "auto": named after the data (bundle_name)
    output_dir: str = "bundles"

    def __post_init__(self) -> None:
        ok = (
            bool(self.name)
            and "/" not in self.name
            and "\\" not in self.name
            and self.name not in (".", "..")
        )
        check(ok, "package", "name", self.name, "a plain folder name (no path separators)")


@dataclass
class Recipe:
    name: str = DEFAULT_RECIPE
    description: str = ""
    target: str = "cpu-avx2"
    cache_dir: str = ".cache/edgepack"
    threads: int | None = None  # torch / ORT threads during the build; None = all cores
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    package: PackageConfig = field(default_factory=PackageConfig)

    def __post_init__(self) -> None:
        check(self.target in TARGETS, "recipe", "target", self.target, f"one of {sorted(TARGETS)}")
        self.quantize = self.quantize.for_target(
            self.target
        )  # the target's preset where [quantize] is silent
        if self.threads is not None:
            check(self.threads >= 1, "recipe", "threads", self.threads, "an integer >= 1")
        # The student's depth is known before any training: from the list, or ("auto") from a local teacher's
        # config.json (and [teacher] layers); any other teacher's is read after the data stage
        # (edgepack.distill.check_depth).
        auto = self.distill.layers == AUTO_LAYERS
        depth = kept_depth(self.teacher.layers, local_depth(self.teacher.model)) if auto else None
        check_student_depth(self.distill, self.prune, depth)
        if self.package.name == AUTO_NAME:
            self.package.name = bundle_name(self.data.source)

    def to_dict(self) -> dict[str, Any]:
        plain = _plain(dataclasses.asdict(self))
        if self.search.storage is not None:  # a manifest never carries the study database's password
            from edgepack.study import redact_url

            plain["search"]["storage"] = redact_url(self.search.storage)
        return plain


def check_student_depth(distill: DistillConfig, prune: PruneConfig, teacher_layers: int | None) -> None:
    """Refuse `[prune]` layer knobs that would remove every layer of a student made of the teacher's layers.
    `teacher_layers`: the teacher's depth, which `layers = "auto"` needs (None: not known yet, nothing checked)."""
    if distill.student != "teacher-layers":
        return
    if isinstance(distill.layers, list):
        prune.check_layers(len(distill.layers), f"[distill] layers = {distill.layers}")
    elif teacher_layers is not None:
        layers = auto_layers(teacher_layers)
        where = f'[distill] layers = "{AUTO_LAYERS}": {layers} of the teacher\'s {teacher_layers} layers'
        prune.check_layers(len(layers), where)


def local_depth(model: str) -> int | None:
    """The layer count of a teacher in a local folder, from its config.json; None for any other teacher (a Hub
    id, a package) or a family edgepack does not know: the distill stage reads those."""
    folder = Path(model).expanduser()
    if not (folder / "config.json").is_file():
        return None
    from edgepack.architectures import folder_depth  # torch: only for "auto" layers and a local teacher

    try:
        return folder_depth(folder)[0]
    except (OSError, ValueError):
        return None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _type_ok(value: Any, annotation: Any) -> bool:
    """A shallow type check of a TOML value against a dataclass field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(annotation)
        return isinstance(value, dict) and all(
            _type_ok(k, key) and _type_ok(v, item) for k, v in value.items()
        )
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return isinstance(value, str)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _build(cls: type, values: dict[str, Any], section: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise RecipeError(f"[{section}] has no key {key!r}; known keys: {', '.join(sorted(known))}.")
        annotation = hints[key]
        if value == "none" and _type_ok(None, annotation):  # unsets an optional key; pruner = "none" stays
            value = None
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise RecipeError(f"[{key}] must be a table, got {value!r}.")
            value = _build(annotation, value, key)  # type: ignore[arg-type]
        elif not _type_ok(value, annotation):
            raise RecipeError(f"[{section}] {key} = {value!r} has the wrong type: expected {annotation}.")
        kwargs[key] = value
    return cls(**kwargs)


def recipe_path(name_or_path: str) -> Path:
    """Resolve a shipped recipe name (`clinc`) or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise RecipeError(f"Recipe file {path} does not exist.")
        return path
    shipped = RECIPES_DIR / f"{name_or_path}.toml"
    if not shipped.is_file():
        names = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.toml")))
        raise RecipeError(f"Unknown recipe {name_or_path!r}: use one of {names}, or a path to a .toml file.")
    return shipped


def _merge(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """`values` over `base`, table by table (a table's keys replace the same keys of the base's table)."""
    merged = dict(base)
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merged[key] | value
        else:
            merged[key] = value
    return merged


def _read_values(name_or_path: str, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe's TOML values, merged over those of the recipes it `extends` (a name, or a list merged in
    order), if any."""
    path = recipe_path(name_or_path)
    if path.resolve() in chain:
        raise RecipeError(f"Recipe {path} extends itself (through {' -> '.join(p.name for p in chain)}).")
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(f"Recipe {path} is not valid TOML: {exc}.") from None
    values["name"] = values.get("name", path.stem)
    bases = values.pop("extends", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise RecipeError(
            f"Recipe {path}: extends = {bases!r} must be a recipe name or path, or a list of them."
        )
    if not bases:
        return values
    merged: dict[str, Any] = {}
    for base in bases:
        if not Path(base).suffix and (path.parent / f"{base}.toml").is_file():
            base = str(path.parent / f"{base}.toml")  # a sibling recipe, or a shipped one by name
        merged = _merge(merged, _read_values(base, (*chain, path.resolve())))
    if "description" not in values:
        values["description"] = f"{values['name']}: {merged.get('description', '')} (extended)"
    return _merge(merged, values)


def shipped_recipes() -> list[tuple[str, str]]:
    """(name, description) of every recipe in RECIPES_DIR (overlays are not recipes)."""
    return [
        (path.stem, str(_read_values(str(path)).get("description", "")))
        for path in sorted(RECIPES_DIR.glob("*.toml"), key=lambda path: path.stem)
    ]


def _overlay_tables(name_or_path: str) -> dict[str, Any]:
    """An overlay's stage tables only (its name, description and any non-table key are not applied)."""
    return {k: v for k, v in _read_values(name_or_path).items() if isinstance(v, dict)}


def load_recipe(
    name_or_path: str = DEFAULT_RECIPE,
    overrides: dict[str, Any] | None = None,
    overlays: tuple[str, ...] = (),
) -> Recipe:
    """Load a recipe (following `extends`), merge the stage tables of `overlays` over it (for example
    QUICK_OVERLAY, what `edgepack build --quick` adds), then apply dotted overrides such as
    {"teacher.epochs": 3}."""
    values = _read_values(name_or_path)
    for overlay in overlays:
        values = _merge(values, _overlay_tables(overlay))
    for dotted, value in (overrides or {}).items():
        *tables, key = dotted.split(".")
        node = values
        for table in tables:
            node = node.setdefault(table, {})
            if not isinstance(node, dict):
                raise RecipeError(f"Override {dotted!r}: {table!r} is not a table.")
        node[key] = value
    return _build(Recipe, values, "recipe")


def recipe_from_dict(values: dict[str, Any]) -> Recipe:
    """A recipe from its resolved form (`Recipe.to_dict()`, as a bundle's manifest records it), checked as a
    TOML recipe is: an unknown key or a bad value raises RecipeError naming it."""
    if not isinstance(values, dict):
        raise RecipeError(f"A resolved recipe must be a table, got {type(values).__name__}.")
    return _build(Recipe, values, "recipe")


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a `--set section.key=value` override; the value is read as TOML, else taken as a string."""
    if "=" not in text:
        raise RecipeError(
            f"Override {text!r} must look like section.key=value (for example teacher.epochs=3)."
        )
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value
