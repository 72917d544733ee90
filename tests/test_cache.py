"""The build cache: an entry counts once complete, and two builds of one entry never write it at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from edgepack.cache import Cache


def _make(
    cache: Cache, folder: Path, name: str, answers: list[tuple[str, bool]], started: threading.Event
) -> None:
    with cache.claim(folder) as fresh:
        started.set()
        if fresh:
            (folder / "model.txt").write_text(name)
            time.sleep(0.5)  # the other build asks for the entry meanwhile
            cache.finish(folder, {"made_by": name})
        answers.append((name, fresh))


def test_a_second_build_of_one_entry_waits_and_reuses_the_first(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    folder = cache.folder("pruned", "same-key")
    answers: list[tuple[str, bool]] = []
    first_in = threading.Event()
    first = threading.Thread(target=_make, args=(cache, folder, "first", answers, first_in))
    first.start()
    first_in.wait(5)
    second = threading.Thread(target=_make, args=(cache, folder, "second", answers, threading.Event()))
    second.start()
    first.join(10)
    second.join(10)
    assert answers == [("first", True), ("second", False)], "the second waited, then found the entry complete"
    assert (folder / "model.txt").read_text() == "first" and cache.record(folder) == {"made_by": "first"}


def test_a_failed_build_releases_the_entry_unfinished(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    folder = cache.folder("teacher", "k")
    with pytest.raises(RuntimeError), cache.claim(folder) as fresh:
        assert fresh
        (folder / "half-written").write_text("x")
        raise RuntimeError("killed mid-stage")
    assert not cache.is_complete(folder)
    with cache.claim(folder) as fresh:  # not blocked: the lock went with the failure
        assert fresh and not (folder / "half-written").exists(), "the leftover is emptied before writing"
        cache.finish(folder, {})
    with cache.claim(folder) as fresh:
        assert not fresh
