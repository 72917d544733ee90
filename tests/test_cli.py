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
