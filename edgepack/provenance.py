"""What a build ran with, for the manifest and `edgepack rebuild`: the installed packages of edgepack's
dependency closure, Python, the platform, the seeds and the determinism settings."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from edgepack.recipe import Recipe

ROOT_DISTRIBUTION = "edgepack"
# Installed from this repository (editable, as the README sets up): their version does not change with the code.
CHECKOUT_DISTRIBUTIONS = ("edgepack", "edgepack-runtime")
SOURCE_ROOT = Path(__file__).resolve().parent.parent  # the repository, when edgepack runs from one
_QUIET: dict[str, Any] = {"capture_output": True, "text": True, "check": True, "timeout": 30}


def _requirements(dist: metadata.Distribution, extras: frozenset[str]) -> list[Requirement]:
    """dist's requirements whose markers hold here, for its base install plus `extras`."""
    wanted = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *sorted(extras))):
            wanted.append(req)
    return wanted


def dependency_closure(root: str = ROOT_DISTRIBUTION) -> dict[str, str]:
    """{normalised name: version} of `root` and every installed distribution it requires, recursively.

    Requirements are followed where their environment markers hold on this interpreter, extras only where a
    requirement asks for them (edgepack's own extras, dev tools, freeze, offline models, are not followed).
    A required distribution that is not installed is left out: the build ran without it.
    """
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    while todo:
        name, extras = todo.pop()
        if (canonicalize_name(name), extras) in seen:
            continue
        seen.add((canonicalize_name(name), extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[canonicalize_name(dist.metadata["Name"])] = dist.version
        todo += [(req.name, frozenset(req.extras)) for req in _requirements(dist, extras)]
    return dict(sorted(found.items()))


def versions() -> dict[str, str]:
    """Python's version, then every package of edgepack's dependency closure (see dependency_closure);
    edgepack and its runtime, when they run from a git checkout, with the commit as a local version label."""
    found = {"python": platform.python_version(), **dependency_closure()}
    label = checkout_label()
    if label is not None:
        for name in CHECKOUT_DISTRIBUTIONS:
            if name in found:
                found[name] += label
    return found


def checkout_label(root: Path = SOURCE_ROOT) -> str | None:
    """`+g<commit>` (and `.dirty` when edgepack's or the runtime's code has uncommitted changes), as
    setuptools-scm labels versions, when edgepack runs from a git checkout; None otherwise (a wheel's version
    says what it is) or when git cannot tell."""
    if not (root / ".git").exists():
        return None
    git = ["git", "-C", str(root)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], **_QUIET).stdout.strip()
        changes = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no", "--", "edgepack", "runtime/src"], **_QUIET
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # no git, or not a repository it can read
        return None
    return f"+g{commit}" + (".dirty" if changes else "")


def machine() -> dict[str, str]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python_implementation": platform.python_implementation(),
    }


def seeds(recipe: Recipe) -> dict[str, int]:
    """Every seed the build uses, by what it drives."""
    from edgepack.data import SUBSAMPLE_SEED
    from edgepack.quantize import CALIBRATION_SEED

    return {
        "teacher": recipe.teacher.seed,  # head initialisation, dropout, shuffling of the fine-tuning
        "distill": recipe.distill.seed,  # every student's training, and the prune stage's recovery
        "search": recipe.search.seed,  # the Optuna sampler and the search's training subset
        "augment": recipe.augment.seed,  # the augmented copies
        "data_split": recipe.data.split_seed,  # which examples a missing validation / test split is carved from
        "data_subsample": SUBSAMPLE_SEED,  # which examples [data] max_train_samples keeps
        "calibration": CALIBRATION_SEED,  # which texts calibrate static quantization
    }


def determinism() -> dict[str, Any]:
    """How deterministic the build's training was asked to be, and on how many threads it ran."""
    import torch

    return {
        "torch_deterministic_algorithms": "on while training (warn_only)",
        "torch_threads": torch.get_num_threads(),
    }
