"""On-disk cache for expensive results (fine-tuned teacher, teacher logits), keyed by a hash of their inputs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

_DONE = ".complete"


def hash_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_folder(folder: Path) -> str:
    """Content hash of a model folder (file names and bytes, sub-folders included)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(hash_file(path).encode())
    return digest.hexdigest()


def cache_key(*parts: Any) -> str:
    """A short stable key for JSON-serialisable parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def key_settings(config: Any, added_later: dict[str, Any]) -> dict[str, Any]:
    """A stage config's settings for its cache key: `asdict(config)` without the knobs in `added_later` while
    they hold the value they had before they existed, so entries cached back then keep their keys."""
    settings = asdict(config)
    for key, before in added_later.items():
        if settings[key] == before:
            del settings[key]
    return settings


class Cache:
    """`root/<kind>-<key>/` folders that count only once marked complete, so a killed build never poisons it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def folder(self, kind: str, key: str) -> Path:
        return self.root / f"{kind}-{key}"

    def is_complete(self, folder: Path) -> bool:
        return (folder / _DONE).is_file()

    def start(self, folder: Path) -> Path:
        """Empty the folder (a leftover of an interrupted run) and return it for writing."""
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        return folder

    @contextlib.contextmanager
    def claim(self, folder: Path) -> Iterator[bool]:
        """Hold `folder`'s lock (`.locks/<folder name>.lock`, released with the process) while this build makes
        it: True when it must be made (emptied for writing), False when it is complete, made by another build
        this one waited for. Two builds of one entry never write one folder, and the second reuses the first's."""
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        lock = FileLock(locks / f"{folder.name}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("cache: another build is making %s; waiting for it", folder)
            lock.acquire()
        try:
            fresh = not self.is_complete(folder)
            if fresh:
                self.start(folder)
            yield fresh
        finally:
            lock.release()

    def finish(self, folder: Path, record: dict[str, Any]) -> None:
        (folder / "record.json").write_text(json.dumps(record, indent=2, default=str))
        (folder / _DONE).touch()

    def record(self, folder: Path) -> dict[str, Any]:
        return json.loads((folder / "record.json").read_text())
