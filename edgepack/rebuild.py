"""`edgepack rebuild`: run a bundle's resolved recipe again, with the same target and seeds, on the same data
source, into another folder, and report what differs from the manifest it started from.

Differences are the point of the report, not errors: the data digests, the teacher's weights, the package
versions, the seeds, the metrics and the files' hashes are listed side by side. Errors are only what stops a
rebuild before it starts: no readable manifest, no recorded recipe, a data source that is gone.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepack_runtime.bundle import MANIFEST, BundleError
from edgepack_runtime.manifest import parse_manifest

from edgepack.errors import EdgepackError, RecipeError
from edgepack.recipe import Recipe, recipe_from_dict

log = logging.getLogger(__name__)
# A rebuild's search runs as many trials as the original's did, however long they take: a time budget ends a
# search after a number of trials that depends on the machine's speed and load, a trial count does not.
PINNED_SEARCH_MINUTES = 24 * 60
DEFAULT_SUBFOLDER = "rebuilt"  # the new bundle goes to <original's folder>/rebuilt/<name> unless --out says
# (label, path in the manifest) of the figures compared; the bundle's own are measured through the runtime.
METRICS = (
    ("teacher validation accuracy", ("metrics", "teacher", "validation", "accuracy")),
    ("teacher test accuracy", ("metrics", "teacher", "test", "accuracy")),
    ("teacher test accuracy, thresholded", ("metrics", "teacher", "test_thresholded", "accuracy")),
    ("student validation score (distill)", ("distillation", "validation_score")),
    ("bundle validation accuracy", ("metrics", "validation", "accuracy")),
    ("bundle test accuracy", ("metrics", "test", "accuracy")),
    ("bundle test accuracy, thresholded", ("metrics", "test_thresholded", "accuracy")),
    ("bundle test in-scope accuracy, thresholded", ("metrics", "test_thresholded", "in_scope_accuracy")),
    ("bundle test oos recall, thresholded", ("metrics", "test_thresholded", "oos_recall")),
    ("fp32 student graph test accuracy", ("metrics", "student_fp32_graph", "test", "accuracy")),
    ("fp32 vs int8 label agreement (validation)", ("metrics", "fp32_vs_int8_validation", "label_agreement")),
    ("bundle bytes", ("metrics", "bundle_bytes")),
)


class RebuildError(EdgepackError):
    """A bundle that cannot be rebuilt as it is: the message says why and what to do."""


@dataclass
class Rebuilt:
    original: Path
    bundle: Path
    report: dict[str, Any]


def read_manifest(bundle: Path) -> dict[str, Any]:
    """The bundle's manifest as its build wrote it (digest checked), with a resolved recipe in it."""
    path = bundle / MANIFEST
    if not bundle.is_dir():
        raise RebuildError(f"{bundle} is not a bundle folder: pass the folder that holds {MANIFEST}.")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RebuildError(
            f"{bundle} has no {MANIFEST}: pass a bundle folder written by `edgepack build`."
        ) from None
    except OSError as exc:
        raise RebuildError(f"Cannot read {path} ({exc.strerror}): check that you may read it.") from None
    try:
        manifest, _ = parse_manifest(raw)
    except BundleError as exc:
        raise RebuildError(
            f"{path} is unreadable ({exc.problem}). A rebuild follows the manifest its build wrote: restore "
            "that manifest, or build afresh with `edgepack build --recipe RECIPE`."
        ) from None
    if not isinstance(manifest.get("recipe"), dict):
        raise RebuildError(
            f"{path} records no resolved recipe, so there is nothing to rebuild from; build afresh with "
            "`edgepack build --recipe RECIPE`."
        )
    return manifest


def data_source(manifest: dict[str, Any], bundle: Path, override: str | None) -> str:
    """The data the original build read (its resolved local path, else the Hub name), or `override`."""
    if override is not None:
        return override
    given = manifest["recipe"].get("data", {}).get("source")
    source = (manifest.get("data") or {}).get("source") or given
    if not isinstance(source, str) or not source:
        raise RebuildError(
            f"{bundle / MANIFEST} records no data source: pass --data with the data it was built on."
        )
    if Path(source).is_absolute() and not Path(source).exists():
        raise RebuildError(
            f"The data {bundle} was built on, {source} (given as {given!r}), does not exist any more. Put it "
            "back there, or pass --data with a copy of it (the report says whether it holds the same examples)."
        )
    return source


def destination(bundle: Path, name: str, out: Path | None) -> Path:
    """Where the new bundle goes: `out`/name, by default beside the original in DEFAULT_SUBFOLDER; never the
    original itself, never over an existing folder."""
    folder = out if out is not None else bundle.parent / DEFAULT_SUBFOLDER
    target = folder / name
    if target.resolve() == bundle.resolve():
        raise RebuildError(
            f"--out {folder} would write the rebuild over the original bundle {bundle}: choose another folder."
        )
    if target.exists():
        raise RebuildError(
            f"{target} already exists (an earlier rebuild?): remove it, or pass another --out."
        )
    return target


def rebuild_recipe(
    manifest: dict[str, Any], source: str, output_dir: Path, cache_dir: str | None = None
) -> Recipe:
    """The manifest's resolved recipe, with only where it reads data, writes the bundle and caches changed; a
    search pinned to the original's number of trials (not its time budget), in a study of its own."""
    values = copy.deepcopy(manifest["recipe"])
    values.setdefault("data", {})["source"] = source
    values.setdefault("package", {})["output_dir"] = str(output_dir)
    recorded = _at(manifest, ("distillation", "search", "trials"))
    if isinstance(recorded, list) and recorded and (values.get("search") or {}).get("trials"):
        values["search"] |= {"trials": len(recorded), "timeout_minutes": PINNED_SEARCH_MINUTES}
    if (values.get("search") or {}).get("storage") is not None:
        # Never add trials to the shared study the original search used (it holds other builds' trials).
        log.warning("rebuild: searching in a study of its own, not the shared [search] storage")
        values["search"]["storage"] = None
    if cache_dir is not None:
        values["cache_dir"] = cache_dir
    try:
        return recipe_from_dict(values)
    except RecipeError as exc:
        raise RebuildError(
            f"The bundle's recorded recipe does not load in this edgepack ({exc}); rebuild it with the edgepack "
            f"version that built it ({manifest.get('edgepack_version', 'unknown')})."
        ) from None


def rebuild(
    bundle: Path, out: Path | None = None, data: str | None = None, no_cache: bool = False
) -> Rebuilt:
    """Rebuild `bundle` from its manifest and compare the two manifests. `no_cache`: a fresh temporary cache,
    so the teacher and the student are trained again rather than reused."""
    from edgepack.pipeline import build

    original = read_manifest(bundle)
    source = data_source(original, bundle, data)
    target = destination(bundle, original["recipe"].get("package", {}).get("name", bundle.name), out)
    with contextlib.ExitStack() as stack:
        fresh = (
            stack.enter_context(tempfile.TemporaryDirectory(prefix="edgepack-cache-")) if no_cache else None
        )
        built = build(rebuild_recipe(original, source, target.parent, fresh))
    return Rebuilt(bundle, built.path, compare(original, built.manifest))


def _at(manifest: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = manifest
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as {"a.b.c": leaf}."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out |= _flat(item, f"{prefix}.{key}" if prefix else str(key))
    return out


def _pairs(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Keys whose values differ, as [old, new] (None where a side lacks the key)."""
    return {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def _same(old: Any, new: Any) -> bool | None:
    """Equal, different, or None when the original did not record it."""
    return None if old is None else old == new


def compare_versions(old: dict[str, str], new: dict[str, str]) -> dict[str, Any]:
    return {
        "added": {k: new[k] for k in sorted(set(new) - set(old))},
        "removed": {k: old[k] for k in sorted(set(old) - set(new))},
        "changed": {k: [old[k], new[k]] for k in sorted(set(old) & set(new)) if old[k] != new[k]},
        "unchanged": len([k for k in set(old) & set(new) if old[k] == new[k]]),
    }


def _metrics(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for label, path in METRICS:
        a, b = _at(old, path), _at(new, path)
        if a is None and b is None:
            continue
        difference = b - a if isinstance(a, int | float) and isinstance(b, int | float) else None
        rows.append({"metric": label, "original": a, "rebuilt": b, "difference": difference})
    return rows


def compare(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What differs between an original manifest and its rebuild's."""
    old_digests, new_digests = _at(old, ("data", "sha256")) or {}, _at(new, ("data", "sha256")) or {}
    old_weights, new_weights = (
        _at(old, ("teacher", "weights_sha256")),
        _at(new, ("teacher", "weights_sha256")),
    )
    files = {
        name: {"same": _same(_at(old, ("files", name, "sha256")), record["sha256"]), "size": record["size"]}
        for name, record in new["files"].items()
    }
    return {
        "data": {
            "source": [_at(old, ("data", "source")), _at(new, ("data", "source"))],
            "splits": {
                split: {"same": _same(old_digests.get(split), digest), "sha256": digest}
                for split, digest in new_digests.items()
            },
        },
        "teacher": {
            "weights_same": _same(old_weights, new_weights),
            "weights_sha256": new_weights,
            "base_model_same": _same(
                _at(old, ("teacher", "base_model_sha256")), _at(new, ("teacher", "base_model_sha256"))
            ),
            "from_cache": bool(_at(new, ("teacher", "cached"))),
            "student_from_cache": bool(_at(new, ("distillation", "cached"))),
        },
        "seeds": _seeds(old, new),
        "determinism": _pairs(_determinism(old), _determinism(new)),
        "versions": compare_versions(old.get("versions") or {}, new.get("versions") or {}),
        "recipe": _pairs(_flat(old["recipe"]), _flat(new["recipe"])),
        "machine": _pairs(old.get("machine") or {}, new.get("machine") or {}),
        "metrics": _metrics(old, new),
        "files": files,
    }


def _seeds(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    recorded = _at(old, ("reproducibility", "seeds"))
    seeds = _at(new, ("reproducibility", "seeds")) or {}
    if recorded is None:  # a bundle from before seeds were recorded: its recipe still holds most of them
        recorded = {
            k: _at(old, ("recipe", k, "seed")) for k in seeds if _at(old, ("recipe", k, "seed")) is not None
        }
    return {"seeds": seeds, "changed": _pairs(recorded, {k: seeds[k] for k in recorded if k in seeds})}


def _determinism(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in (manifest.get("reproducibility") or {}).items() if k != "seeds"}


def _mark(same: bool | None) -> str:
    return {True: "same", False: "DIFFERENT", None: "not recorded in the original"}[same]


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def format_report(rebuilt: Rebuilt) -> str:
    """The report for people: one section per kind of input or output, differences first."""
    r = rebuilt.report
    lines = [f"Rebuilt {rebuilt.original} as {rebuilt.bundle}", "", "data:"]
    lines += [
        f"  {split:<10} {_mark(s['same'])}  sha256 {s['sha256'][:16]}…"
        for split, s in r["data"]["splits"].items()
    ]
    if r["data"]["source"][0] != r["data"]["source"][1]:
        lines.append(f"  source: {r['data']['source'][0]} -> {r['data']['source'][1]}")
    t = r["teacher"]
    cached = " (from the cache: pass --no-cache to train it again)" if t["from_cache"] else ""
    lines += [
        "teacher:",
        f"  weights {_mark(t['weights_same'])}{cached}",
        f"  base model {_mark(t['base_model_same'])}",
    ]
    changed = r["seeds"]["changed"]
    lines.append(f"seeds: {'same' if not changed else 'DIFFERENT'} {r['seeds']['seeds']}")
    lines += [f"  {k}: {a} -> {b}" for k, (a, b) in changed.items()]
    lines += [f"reproducibility.{k}: {a} -> {b}" for k, (a, b) in r["determinism"].items()]
    v = r["versions"]
    lines.append(
        f"package versions: {v['unchanged']} same, {len(v['changed'])} changed, {len(v['added'])} added, "
        f"{len(v['removed'])} removed"
    )
    lines += [f"  changed {k}: {a} -> {b}" for k, (a, b) in v["changed"].items()]
    for kind in ("added", "removed"):
        if v[kind]:
            listed = ", ".join(f"{k}=={ver}" for k, ver in v[kind].items())
            lines += textwrap.wrap(
                f"{kind}: {listed}",
                110,
                initial_indent="  ",
                subsequent_indent="    ",
                break_on_hyphens=False,
            )
    lines += ["recipe:" + (" same" if not r["recipe"] else "")]
    lines += [f"  {k}: {a!r} -> {b!r}" for k, (a, b) in r["recipe"].items()]
    lines += [f"machine.{k}: {a} -> {b}" for k, (a, b) in r["machine"].items()]
    lines += ["metrics:                                      original   rebuilt    difference"]
    for m in r["metrics"]:
        d = m["difference"]
        diff = f"{d:+.4f}" if isinstance(d, float) else f"{d:+d}" if isinstance(d, int) else "-"
        lines.append(f"  {m['metric']:<44}{_number(m['original']):<11}{_number(m['rebuilt']):<11}{diff}")
    lines.append("files:")
    lines += [f"  {name:<15}{'identical' if f['same'] else 'DIFFERENT'}" for name, f in r["files"].items()]
    return "\n".join(lines)
