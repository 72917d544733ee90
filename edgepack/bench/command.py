"""`edgepack bench` behind its click options: the data read as the first bundle's build read it, the teacher to
compare with, the contenders loaded and measured, the report shown and written. edgepack.cli declares the options,
checks the extra, --teacher against --no-teacher and the output folders, then calls `run`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from edgepack_runtime import BundleError
from edgepack_runtime.classifier import limit_tokenizer_threads

from edgepack.bench import measure
from edgepack.bench.contenders import Contender, InvalidBundle, bundle_teacher, load_contenders, read_manifest
from edgepack.bench.floor import Rates, gemm_rates
from edgepack.bench.report import format_table, plot
from edgepack.errors import EdgepackError

Pairs = list[tuple[str, str]]


def _say(message: str) -> None:
    click.echo(message, err=True)


class _Reading:
    """How `edgepack bench` reads labelled data: as the first bundle's build read it (its manifest's data
    record says what it carved), with --text-column / --label-column, and --oos-label renamed to the
    bundle's out-of-scope label."""

    def __init__(self, bundle: Path, text_column: str, label_column: str, oos_label: str | None) -> None:
        manifest = read_manifest(bundle)
        self.built = manifest.get("data") if isinstance(manifest.get("data"), dict) else None
        oos = manifest.get("oos")
        try:  # a bundle without an out-of-scope rule may still have a class called oos
            has_oos_class = "oos" in json.loads((bundle / "labels.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            has_oos_class = False
        self.bundle_oos = oos.get("label") if isinstance(oos, dict) else ("oos" if has_oos_class else None)
        self.columns = (text_column, label_column)
        self.oos_label = oos_label

    def split(self, source: str, split: str, option: str) -> tuple[Pairs, str | None]:
        from edgepack_runtime.data import DataError
        from edgepack_runtime.splits import rename_label

        from edgepack.data import read_split

        try:
            pairs, note = read_split(source, split, *self.columns, self.built)
        except (DataError, OSError, UnicodeDecodeError) as exc:
            raise click.BadParameter(str(exc), param_hint=option) from None
        if note:
            _say(note)
        if self.oos_label is not None and self.bundle_oos is not None:
            pairs = rename_label(pairs, self.oos_label, self.bundle_oos)
        return pairs, note


def _test_data(data: str | None, default_data: Path, reading: _Reading) -> tuple[Path | None, Pairs | None]:
    """The labeled texts for accuracy: the test split of --data, else of `default_data` (the CLINC data beside
    the project) when it exists, else none."""
    source = data if data is not None else (str(default_data) if default_data.exists() else None)
    if source is None:
        _say(
            f"No --data and no {default_data}: accuracy is not measured, latency uses built-in sample queries."
        )
        return None, None
    return Path(source), reading.split(source, "test", "--data")[0]


def _validation_data(validation: str | None, source: Path | None, reading: _Reading) -> Pairs | None:
    """Texts to choose the teacher's out-of-scope threshold on and to draw the trade-off curves on:
    --validation (one file: all of it), else the validation split of --data; none for a single --data file
    of texts to measure (the teacher is then compared by argmax)."""
    if validation is not None:
        return reading.split(validation, "validation", "--validation")[0]
    if source is None:
        return None
    pairs, note = reading.split(str(source), "validation", "--data")
    single = source.is_file() and source.suffix.lower() != ".json"
    return None if single and note is None else pairs


def _bundle_teacher(bundle: Path) -> str | None:
    """The bundle's own teacher when its build's cache still holds it, saying which on stderr; else None."""
    folder, ready = bundle_teacher(bundle)
    if ready:
        teacher = read_manifest(bundle).get("teacher")
        ensemble = teacher.get("ensemble") if isinstance(teacher, dict) else None
        which = f", the first of the {len(ensemble['members'])} teachers it learnt from" if ensemble else ""
        _say(f"comparing with the bundle's teacher at {folder}{which} (--no-teacher to skip it)")
        return str(folder)
    if folder is not None:
        _say(f"no teacher to compare with: the bundle's is not at {folder} any more (pass --teacher)")
    return None


def _check_folders(bundles: tuple[Path, ...]) -> None:
    for path in bundles:
        if not path.is_dir():
            raise click.BadParameter(f"{path}: no such bundle folder", param_hint="BUNDLE")


def _load(
    bundles: tuple[Path, ...],
    teacher: str | None,
    peer: str | None,
    validation: Pairs | None,
    threads: int,
    optimum_teacher: bool,
    contenders: list[Contender],
    skipped: list[dict[str, str]],
) -> None:
    """load_contenders, a bundle it refuses being a bad BUNDLE."""
    try:
        load_contenders(
            bundles,
            teacher,
            peer,
            validation,
            threads,
            contenders,
            skipped,
            _say,
            optimum_teacher=optimum_teacher,
        )
    except InvalidBundle as exc:
        raise click.BadParameter(str(exc), param_hint="BUNDLE") from None


def _cpu_rates(threads: int) -> Rates:
    _say(f"measuring this CPU's FP32 and INT8 matrix-multiply rates on {threads} thread(s) ...")
    return gemm_rates(threads)


def _clean_up(contenders: list[Contender]) -> None:
    for contender in contenders:
        for clean in contender.cleanup:
            clean()


def _show(report: dict[str, Any], json_path: Path | None, plot_path: Path | None) -> None:
    click.echo(format_table(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2), encoding="utf-8")
        click.echo(f"wrote {json_path}")
    if plot_path is not None:
        plot(report, plot_path)
        click.echo(f"wrote {plot_path}")


def run(
    bundles: tuple[Path, ...],
    *,
    default_data: Path,
    teacher: str | None,
    no_teacher: bool,
    no_optimum_teacher: bool,
    peer: str | None,
    data: str | None,
    validation: str | None,
    text_column: str,
    label_column: str,
    oos_label: str | None,
    threads: int,
    batch_size: int,
    runs: int,
    block: int,
    warmup: int,
    floor: bool,
    json_path: Path | None,
    plot_path: Path | None,
) -> None:
    """Measure `bundles` with the options of `edgepack bench` (see its help), `default_data` standing in for
    a missing --data; the caller has checked the extra, --teacher against --no-teacher and the output folders."""
    _check_folders(bundles)
    limit_tokenizer_threads(threads)  # the bundles' batches, as the runtime's CLI tokenizes them
    reading = _Reading(bundles[0], text_column, label_column, oos_label)
    source, pairs = _test_data(data, default_data, reading)
    if teacher is None and not no_teacher:
        teacher = _bundle_teacher(bundles[0])
    validation_pairs = _validation_data(validation, source, reading)
    contenders: list[Contender] = []
    skipped: list[dict[str, str]] = []
    try:
        _load(bundles, teacher, peer, validation_pairs, threads, not no_optimum_teacher, contenders, skipped)
        rates = _cpu_rates(threads) if floor else None
        report = measure.run(
            contenders,
            measure.latency_queries(pairs),
            pairs,
            threads=threads,
            batch_size=batch_size,
            runs=runs,
            warmup=warmup,
            block=block,
            data=source,
            skipped=skipped,
            rates=rates,
            validation=validation_pairs,
            log=_say,
        )
    except (EdgepackError, BundleError, ValueError, RuntimeError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        _clean_up(contenders)
    _show(report, json_path, plot_path)
