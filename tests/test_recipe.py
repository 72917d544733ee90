from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from edgepack.recipe import RecipeError, load_recipe, parse_override, recipe_path
from edgepack.targets import TARGETS, QuantizeConfig, QuantMode


@pytest.mark.parametrize(
    "name",
    [
        "clinc",
        "clinc-2l",
        "clinc-4l",
        "clinc-quick",
        "clinc-bert",
        "clinc-ensemble",
        "clinc-pruned",
        "clinc-small",
        "clinc-tiny",
    ],
)
def test_shipped_recipes_load(name: str) -> None:
    recipe = load_recipe(name)
    assert recipe.name == name
    assert recipe.data.max_length == 64


def _without(table: dict, keys: Iterable[str]) -> dict:
    return {k: v for k, v in table.items() if k not in keys}


def test_the_default_is_clinc_small_cut_straight_from_the_teacher_to_3_layers() -> None:
    default, small = load_recipe("clinc").to_dict(), load_recipe("clinc-small").to_dict()
    assert default["distill"]["student"] == "teacher", "no 4-layer student: the prune stage cuts the teacher"
    changed = {"keep_layers": 3, "recovery_group_by_length": True, "recovery_learning_rate": 2e-4}
    assert {key: default["prune"][key] for key in changed} == changed
    assert (small["prune"]["keep_layers"], small["prune"]["recovery_learning_rate"]) == (2, 1e-4)
    assert _without(default["prune"], changed) == _without(small["prune"], changed)
    for section in ("teacher", "augment", "evaluate"):
        assert default[section] == small[section], section
    fixed = {"mode": "static-integer", "calibration_method": "minmax", "calibration_samples": 4096}
    assert {key: default["quantize"][key] for key in fixed} == fixed, "since session 16"
    assert _without(default["quantize"], fixed) == _without(small["quantize"], fixed)
    assert default["package"]["name"] == "clinc-int8"


def test_clinc_2l_is_the_default_with_2_layers() -> None:
    default, two = load_recipe("clinc").to_dict(), load_recipe("clinc-2l").to_dict()
    assert two["prune"]["keep_layers"] == 2
    assert _without(two["prune"], ["keep_layers"]) == _without(default["prune"], ["keep_layers"])
    differ = ["name", "description", "prune", "package"]
    assert _without(two, differ) == _without(default, differ)
    assert _without(two["package"], ["name"]) == _without(default["package"], ["name"])
    assert two["package"]["name"] == "clinc-2l-int8"


def test_clinc_tiny_is_clinc_2l_pruned_further_with_a_4bit_table() -> None:
    two, tiny = load_recipe("clinc-2l").to_dict(), load_recipe("clinc-tiny").to_dict()
    further = {"heads_fraction": 0.5, "ffn_fraction": 0.75, "vocab_keep_first": 5000}
    assert {key: tiny["prune"][key] for key in further} == further
    assert _without(tiny["prune"], further) == _without(two["prune"], further)
    assert (tiny["quantize"]["embedding_bits"], tiny["quantize"]["embedding_block_size"]) == (4, 64)
    for section in ("teacher", "distill", "augment", "evaluate"):
        assert tiny[section] == two[section], section
    assert tiny["package"]["name"] == "clinc-tiny-int8"


def test_export_only_bundles_the_teacher_as_it_is_under_any_recipe() -> None:
    from edgepack.recipe import EXPORT_ONLY_OVERLAY

    for name in ("clinc", "clinc-small", "clinc-4l"):
        recipe = load_recipe(name, overlays=(EXPORT_ONLY_OVERLAY,))  # `edgepack build --export-only`
        assert recipe.distill.student == "teacher", name
        assert not recipe.prune.enabled and not recipe.augment.enabled, f"{name}: the teacher as it is"
    assert load_recipe("clinc").prune.enabled, "the default cuts the teacher; --export-only does not"


def test_overrides_reach_nested_values() -> None:
    recipe = load_recipe("clinc-4l", {"teacher.epochs": 2, "target": "arm64", "quantize.mode": "static"})
    assert recipe.teacher.epochs == 2 and recipe.target == "arm64"
    assert recipe.quantize.mode is QuantMode.STATIC


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"teacher.epochz": 2}, r"\[teacher\] has no key 'epochz'; known keys: .*epochs"),
        ({"distill.alpha": 1.5}, r"\[distill\] alpha = 1.5 is invalid: expected a number in \[0, 1\]"),
        ({"distill.temperature": "hot"}, r"\[distill\] temperature = 'hot' has the wrong type"),
        ({"target": "cpu-sse"}, r"target = 'cpu-sse' is invalid: expected one of"),
        (
            {"quantize.mode": "half"},
            r"\[quantize\] mode = 'half' is invalid: expected one of \['dynamic', 'static', 'static-integer'\]",
        ),
        ({"search.alpha": [0.9, 0.1]}, r"\[search\] alpha = \[0.9, 0.1\] is invalid"),
        ({"package.name": "../evil"}, r"\[package\] name = '../evil' is invalid"),
        ({"distill.layers": [0, 0]}, r"\[distill\] layers = \[0, 0\] is invalid"),
        ({"distill.layers": "half"}, r"\[distill\] layers = 'half' is invalid: expected .*, or \"auto\""),
        ({"data.max_length": 4096}, r"\[data\] max_length = 4096 is invalid"),
        ({"teacher.layers": []}, r"\[teacher\] layers = \[\] is invalid: expected a non-empty list"),
        ({"teacher.layers": [1, 1]}, r"\[teacher\] layers = \[1, 1\] is invalid: expected .*distinct"),
        ({"teacher.layers": [-1]}, r"\[teacher\] layers = \[-1\] is invalid"),
        ({"teacher.layers": "half"}, r"\[teacher\] layers = 'half' is invalid: expected .*\"auto\""),
        ({"teacher.ensemble_seeds": [42]}, r"ensemble_seeds = \[42\] is invalid: .*other than seed \(42\)"),
        (
            {"teacher.ensemble_seeds": [7, 7]},
            r"ensemble_seeds = \[7, 7\] is invalid: expected a list of distinct",
        ),
        (
            {"teacher.ensemble_seeds": [True]},
            r"ensemble_seeds = \[True\] has the wrong type: expected list\[int\]",
        ),
    ],
)
def test_bad_values_name_the_key_and_value(overrides: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        load_recipe("clinc-4l", overrides)


def test_unknown_recipe_lists_the_shipped_ones() -> None:
    with pytest.raises(
        RecipeError,
        match="Unknown recipe 'nope': use one of clinc, clinc-2l, clinc-4l, clinc-bert, clinc-ensemble, clinc-pruned, clinc-quick, clinc-small, clinc-tiny",
    ):
        recipe_path("nope")


def test_invalid_toml_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[teacher\nepochs = 3")
    with pytest.raises(RecipeError, match="is not valid TOML"):
        load_recipe(str(bad))


def test_parse_override_reads_toml_values() -> None:
    assert parse_override("teacher.epochs=3") == ("teacher.epochs", 3)
    assert parse_override("search.alpha=[0.2, 0.4]") == ("search.alpha", [0.2, 0.4])
    assert parse_override("teacher.model=some/model") == ("teacher.model", "some/model")
    with pytest.raises(RecipeError, match="section.key=value"):
        parse_override("teacher.epochs")


def test_target_presets() -> None:
    recipe = load_recipe("clinc-4l")
    avx2 = recipe.quantize
    assert (avx2.weight_type, avx2.activation_type, avx2.per_channel) == ("int8", "uint8", True)
    assert avx2.reduce_range, "7-bit weights: AVX2's u8 x s8 pair-sum must not saturate"
    assert avx2 == QuantizeConfig.avx2(), "a recipe's config is the preset's type, filled in from it"
    vnni = load_recipe("clinc-4l", {"target": "cpu-avx512-vnni"}).quantize
    assert vnni.weight_type == "int8" and "avx512_vnni" in TARGETS["cpu-avx512-vnni"].cpu_features
    pinned = load_recipe("clinc-4l", {"quantize.per_channel": False, "target": "arm64"}).quantize
    assert pinned.per_channel is False and pinned.weight_type == "int8"


def test_extends_merges_tables_over_the_base(tmp_path: Path) -> None:
    child = tmp_path / "child.toml"
    child.write_text('extends = "clinc-4l"\n[teacher]\nepochs = 2\n[package]\nname = "child-int8"\n')
    recipe = load_recipe(str(child))
    assert recipe.name == "child" and recipe.teacher.epochs == 2
    assert recipe.teacher.model == "sentence-transformers/all-MiniLM-L6-v2"  # the rest of [teacher] is kept
    assert recipe.distill.layers == load_recipe("clinc-4l").distill.layers


def test_extends_cycle_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('extends = "b"\n')
    (tmp_path / "b.toml").write_text('extends = "a"\n')
    with pytest.raises(RecipeError, match="extends itself"):
        load_recipe(str(tmp_path / "a.toml"))


def test_quick_budget_matches_the_clinc_quick_recipe() -> None:
    from edgepack.recipe import QUICK_OVERLAY

    quick = load_recipe("clinc-4l", overlays=(QUICK_OVERLAY,)).to_dict()
    recipe = load_recipe("clinc-quick").to_dict()
    for section in ("teacher", "search", "distill"):
        assert quick[section] == recipe[section], section
    # A slice of the base model's layers fine-tuned directly, bundled without distillation (export-only).
    budget = {"layers": "auto", "epochs": 2, "learning_rate": 3e-4, "warmup_ratio": 0.1}
    assert {k: quick["teacher"][k] for k in budget} == budget
    assert quick["distill"]["student"] == "teacher" and quick["distill"]["hidden_weight"] == 0
    assert quick["package"] == load_recipe("clinc-4l").to_dict()["package"], "--quick keeps the recipe's name"
    assert load_recipe("clinc-4l").teacher.layers is None, "without the overlay every layer is fine-tuned"
    over_default = load_recipe("clinc", overlays=(QUICK_OVERLAY,))  # `edgepack build --quick`
    assert not over_default.prune.enabled and not over_default.augment.enabled, "quick: bundled as it is"
    assert load_recipe("clinc").prune.enabled and load_recipe("clinc").augment.used_in("prune")


def test_settings_a_quantization_mode_ignores_are_refused() -> None:
    with pytest.raises(RecipeError, match=r"calibration_samples = 16 is invalid.*mode = \"static\""):
        load_recipe("clinc-4l", {"quantize.calibration_samples": 16})
    with pytest.raises(RecipeError, match="activation_type = 'int8' is invalid"):
        load_recipe("clinc-4l", {"quantize.activation_type": "int8"})
    static = load_recipe("clinc-4l", {"quantize.mode": "static", "quantize.calibration_samples": 16}).quantize
    assert (static.calibration_method, static.calibration_samples) == ("minmax", 16)
    assert load_recipe("clinc-4l").quantize.calibration_samples is None, "dynamic INT8 records no calibration"


def test_static_integer_calibrates_min_max_for_uint8_kernels() -> None:
    fixed = load_recipe("clinc-4l", {"quantize.mode": "static-integer"}).quantize
    assert (fixed.mode, fixed.calibration_method, fixed.calibration_samples) == (
        "static-integer",
        "minmax",
        4096,
    )
    assert (fixed.activation_type, fixed.is_calibrated, fixed.is_static) == ("uint8", True, False)
    with pytest.raises(
        RecipeError, match=r"calibration_method = 'entropy' is invalid.*mode = \"static\" for"
    ):
        load_recipe("clinc-4l", {"quantize.mode": "static-integer", "quantize.calibration_method": "entropy"})
    with pytest.raises(RecipeError, match=r"activation_type = 'int8' is invalid.*uint8 kernels"):
        load_recipe("clinc-4l", {"quantize.mode": "static-integer", "quantize.activation_type": "int8"})


def test_extends_takes_a_list_merged_in_order(tmp_path: Path) -> None:
    (tmp_path / "budget.toml").write_text("[teacher]\nepochs = 2\n[search]\ntrials = 1\n")
    (tmp_path / "child.toml").write_text('extends = ["clinc-4l", "budget"]\n[search]\ntrials = 3\n')
    recipe = load_recipe(str(tmp_path / "child.toml"))
    assert (recipe.teacher.epochs, recipe.search.trials, recipe.package.name) == (2, 3, "clinc-4l-int8")


def test_out_of_scope_rules_are_checked() -> None:
    assert load_recipe("clinc-4l").evaluate.oos_threshold == "reject:0.02"
    for good in ("reject:0.05", "auto", "accuracy", "none"):
        load_recipe("clinc-4l", {"evaluate.oos_threshold": good})
    load_recipe("clinc-4l", {"evaluate.oos_threshold": 3.5, "evaluate.oos_method": "energy"})
    with pytest.raises(
        RecipeError, match="oos_method = 'auto' is invalid.*a number is on one method's score"
    ):
        load_recipe("clinc-4l", {"evaluate.oos_threshold": 3.5})
    for bad in ("reject:1.5", "reject:x", "balanced-ish"):
        with pytest.raises(RecipeError, match="oos_threshold .* is invalid.*reject:Q"):
            load_recipe("clinc-4l", {"evaluate.oos_threshold": bad})
    with pytest.raises(RecipeError, match="oos_method = 'knn' is invalid"):
        load_recipe("clinc-4l", {"evaluate.oos_method": "knn"})


def test_the_generic_recipe_fits_any_data(tmp_path: Path) -> None:
    folder = tmp_path / "my intents"
    folder.mkdir()
    recipe = load_recipe("generic", {"data.source": str(folder)})
    assert recipe.package.name == "my-intents-int8", "named after the data"
    assert recipe.data.max_length == "auto" and recipe.data.oos_label is None
    assert recipe.evaluate.rejection_label is None and recipe.data.validation_fraction == 0.1
    with pytest.raises(RecipeError, match=r"\[data\] source = '' is invalid: .*\(--data\)"):
        load_recipe("generic")
    assert load_recipe("generic", {"data.source": "x", "package.name": "mine"}).package.name == "mine"


def test_bundle_names_come_from_the_data(tmp_path: Path) -> None:
    from edgepack.recipe import bundle_name

    (tmp_path / "snips").mkdir()
    (tmp_path / "snips" / "train.csv").write_text("text,label\n")
    (tmp_path / "reviews.v2.jsonl").write_text("")
    assert bundle_name(str(tmp_path / "snips")) == "snips-int8"
    assert bundle_name(str(tmp_path / "snips" / "train.csv")) == "snips-int8", "a split file: its folder"
    assert bundle_name(str(tmp_path / "reviews.v2.jsonl")) == "reviews.v2-int8"
    assert bundle_name("DeepPavlov/clinc_oos:plus") == "clinc_oos-plus-int8"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"data.max_length": "long"},
            r'max_length = \'long\' is invalid: expected an integer in 8..512, or "auto"',
        ),
        ({"data.validation_fraction": 0.6}, r"validation_fraction = 0.6 is invalid: expected a share"),
        ({"data.test_fraction": 0.0}, r"test_fraction = 0.0 is invalid"),
        (
            {"evaluate.rejection_label": "unsure", "evaluate.oos_threshold": "auto"},
            r"oos_threshold = 'auto' is invalid: expected \"reject:Q\" or a number with a rejection_label",
        ),
    ],
)
def test_bad_data_and_rejection_values(overrides: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        load_recipe("clinc-4l", overrides)


def test_auto_layers_are_checked_against_the_teacher_depth(tiny_family_model: Callable[[str], Path]) -> None:
    """A local teacher's depth is read with the recipe; any other teacher's once the data stage has it
    (edgepack.distill.check_depth), with the same message. The 3-layer teacher gives a 2-layer student."""
    from edgepack import distill

    teacher = str(tiny_family_model("distilbert"))
    base = {"data.source": "x", "teacher.model": teacher}
    where = r"\(\[distill\] layers = \"auto\": \[0, 2\] of the teacher's 3 layers\)"
    dropped = rf"drop_layers = \[0, 1\] is invalid: expected indices of the student's 2 layers .*{where}"
    with pytest.raises(RecipeError, match=dropped):
        load_recipe("generic", base | {"prune.drop_layers": [0, 1]})
    assert load_recipe("generic", base | {"prune.keep_layers": 2}).prune.keep_layers == 2
    hub = load_recipe("generic", {"data.source": "x", "teacher.model": "org/model", "prune.keep_layers": 3})
    kept = rf"keep_layers = 3 is invalid: expected at most the student's 2 layers {where}"
    with pytest.raises(RecipeError, match=kept):
        distill.check_depth(hub.distill, hub.prune, teacher)
    distill.check_depth(load_recipe("clinc-4l").distill, hub.prune, "org/model")  # a list: no teacher is read
    # [teacher] layers: the teacher is the slice, so "auto" student layers come from its depth (2 of 3 here).
    sliced = r"\(\[distill\] layers = \"auto\": \[0\] of the teacher's 2 layers\)"
    for layers in ([0, 2], "auto"):
        with pytest.raises(RecipeError, match=rf"keep_layers = 2 is invalid: .*student's 1 layers {sliced}"):
            load_recipe("generic", base | {"teacher.layers": layers, "prune.keep_layers": 2})
        with pytest.raises(RecipeError, match=rf"keep_layers = 3 is invalid: .*student's 1 layers {sliced}"):
            distill.check_depth(hub.distill, hub.prune, teacher, layers)
