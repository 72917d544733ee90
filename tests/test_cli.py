from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepack import __version__
from edgepack.cli import main


def test_version_and_help() -> None:
    runner = CliRunner()
    assert __version__ in runner.invoke(main, ["--version"]).output
    result = runner.invoke(main, ["build", "-h"])
    assert result.exit_code == 0 and "--target" in result.output and "--study-storage" in result.output


def test_bad_override_is_a_bad_parameter() -> None:
    result = CliRunner().invoke(main, ["build", "--set", "distill.alpha=7"])
    assert result.exit_code == 2
    assert "alpha = 7 is invalid" in result.output and "Traceback" not in result.output


def test_unknown_target_is_refused() -> None:
    result = CliRunner().invoke(main, ["build", "--target", "cpu-sse"])
    assert result.exit_code == 2 and "cpu-sse" in result.output


def test_missing_data_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["build", "--data", str(tmp_path / "absent"), "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "Error:" in result.output and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())


def test_cli_builds_a_bundle(tiny_recipe: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["build", "--recipe", str(tiny_recipe), "--trials", "0", "--name", "cli-bundle"]
    )
    assert result.exit_code == 0, result.output
    assert "verify with: edgepack-run verify" in result.output
    assert (tmp_path / "bundles" / "cli-bundle" / "manifest.json").is_file()


def test_ctrl_c_stops_cleanly(tiny_recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgepack import evaluate

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "run", interrupted)
    result = CliRunner().invoke(main, ["build", "--recipe", str(tiny_recipe), "--trials", "0"])
    assert result.exit_code == 130
    assert "Interrupted: no bundle was written" in result.output
    assert not (tmp_path / "bundles").exists() or not list((tmp_path / "bundles").iterdir())
    assert not list((tmp_path / "cache").glob("work-*")), "work files left behind"


def test_recipes_lists_every_shipped_recipe_with_its_description() -> None:
    from edgepack.recipe import RECIPES_DIR, load_recipe

    result = CliRunner().invoke(main, ["recipes"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()}
    assert set(lines) == {p.stem for p in RECIPES_DIR.glob("*.toml")} and "generic" in lines
    assert load_recipe("clinc-quick").description in lines["clinc-quick"]
    assert lines["clinc"].endswith("[default]") and lines["generic"].endswith("[default with --data]")


def test_data_options_are_on_build_and_bench() -> None:
    for command in ("build", "bench"):
        result = CliRunner().invoke(main, [command, "-h"])
        for option in ("--data", "--text-column", "--label-column", "--oos-label"):
            assert option in result.output, f"{command} has no {option}"
    assert "--dry-run" in CliRunner().invoke(main, ["build", "-h"]).output


def test_build_without_data_is_still_the_clinc_recipe(tiny_data: Path, tiny_model: Path) -> None:
    """No --recipe and no --data: the default CLINC recipe (the README's one-command build), here pointed at
    the tiny data through --set so the dry run needs no CLINC download."""
    args = ["build", "--dry-run", "--set", f'data.source="{tiny_data}"', "--teacher", str(tiny_model)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "# Resolved recipe (clinc)" in result.stdout and 'name = "clinc-int8"' in result.stdout
    assert "max_length = 64" in result.stdout and 'oos_label = "oos"' in result.stdout
    assert "out of scope: the data's out-of-scope class" in result.stdout
    assert "texts it would truncate: train 0, validation 0, test 0" in result.stdout


def test_dry_run_recipe_reads_back(tiny_data: Path, tiny_model: Path, tmp_path: Path) -> None:
    """The resolved recipe a dry run prints is TOML that loads into the same recipe."""
    from edgepack.recipe import load_recipe

    result = CliRunner().invoke(
        main,
        ["build", "--dry-run", "--data", str(tiny_data), "--teacher", str(tiny_model), "--oos-label", "oos"],
    )
    assert result.exit_code == 0, result.output
    toml_text = result.stdout.split("\n\nData: ")[0].split("\n", 1)[1]
    (tmp_path / "printed.toml").write_text(toml_text, encoding="utf-8")
    printed = load_recipe(str(tmp_path / "printed.toml"))
    expected = load_recipe("generic", {"data.source": str(tiny_data), "teacher.model": str(tiny_model)})
    expected.data.oos_label = "oos"
    assert printed.to_dict() == expected.to_dict()
