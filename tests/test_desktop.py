"""The desktop example (examples/desktop/app.py) on a real X server: Xvfb, keystrokes typed by xdotool.

The app's `--trace` prints one JSON line each time what the window shows changes; `label` is read back from the
label widget itself. Needs Debian's xvfb and xdotool (and tkinter): without them the tests skip locally, but
fail when CI=true, since .ci/run installs both.
"""

from __future__ import annotations

import json
import os
import queue
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from edgepack_runtime import Classifier
from test_pipeline import _tiny_overrides

from edgepack.pipeline import build
from edgepack.recipe import load_recipe

APP = Path(__file__).resolve().parents[1] / "examples" / "desktop" / "app.py"
TITLE = "edgepack intent classifier"  # the app's window title
TIMEOUT = 60  # seconds for any one step; generous for a loaded 2-core CI machine


def _require_tools() -> None:
    missing = [tool for tool in ("Xvfb", "xdotool") if shutil.which(tool) is None]
    if find_spec("_tkinter") is None:
        missing.append("tkinter (Debian: python3-tk)")
    if missing:
        reason = f"needs {', '.join(missing)} (apt-get install xvfb xdotool)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: CI must run this test; .ci/run installs them")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    """A private Xvfb server; -displayfd makes it pick a free display number and write it to a pipe."""
    _require_tools()
    read_end, write_end = os.pipe()
    server = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_end), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
        pass_fds=[write_end],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], TIMEOUT)
        number = os.read(read_end, 64).decode().strip() if ready else ""
        assert number.isdigit(), f"Xvfb did not report a display number (exit code {server.poll()})"
        yield f":{number}"
    finally:
        os.close(read_end)
        server.terminate()
        server.wait(TIMEOUT)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, tiny_model: Path) -> Path:
    tmp = tmp_path_factory.mktemp("desktop")
    return build(
        load_recipe("clinc-4l", _tiny_overrides(tmp, tiny_data, tiny_model) | {"search.trials": 0})
    ).path


class RunningApp:
    """The app as a subprocess on `display`, its trace lines collected by a reader thread."""

    def __init__(self, display: str, bundle: Path, stderr: Path) -> None:
        self.display = display
        self.stderr_path = stderr
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        with stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(APP), str(bundle), "--trace"],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=os.environ | {"DISPLAY": display},
            )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))
        self.events.put(None)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for(self, event: str, **fields: Any) -> dict[str, Any]:
        """The next trace line of this `event` whose fields equal `fields`."""
        deadline = time.monotonic() + TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self.events.get(timeout=left)
            except queue.Empty:
                break
            if item is None:
                pytest.fail(f"the app exited ({self.proc.wait()}); trace {self.seen}; stderr:\n{self.stderr}")
            self.seen.append(item)
            if item["event"] == event and all(item.get(k) == v for k, v in fields.items()):
                return item
        pytest.fail(f"no {event} {fields} within {TIMEOUT}s; trace {self.seen}; stderr:\n{self.stderr}")

    def rest(self) -> list[dict[str, Any]]:
        """The trace lines still unread, once the app has exited."""
        lines = []
        while (item := self.events.get(timeout=TIMEOUT)) is not None:
            lines.append(item)
        return lines

    def xdotool(self, *args: str) -> str:
        result = subprocess.run(
            ["xdotool", *args],
            env=os.environ | {"DISPLAY": self.display},
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        )
        return result.stdout

    def focus(self) -> None:
        window = self.xdotool("search", "--sync", "--onlyvisible", "--name", TITLE).split()[0]
        self.xdotool("windowfocus", "--sync", window)  # no window manager on Xvfb: set X input focus

    def close(self) -> int:
        """Quit with Ctrl+Q, the way a user would; the exit code."""
        self.xdotool("key", "ctrl+q")
        return self.proc.wait(TIMEOUT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)


@pytest.fixture()
def run_app(display: str, tmp_path: Path) -> Iterator[Any]:
    apps: list[RunningApp] = []

    def start(bundle: Path) -> RunningApp:
        apps.append(RunningApp(display, bundle, tmp_path / f"stderr-{len(apps)}.txt"))
        return apps[-1]

    yield start
    for app in apps:
        app.kill()


def _check_shows(result: dict[str, Any], classifier: Classifier, text: str) -> None:
    expected = classifier.predict(text, top_k=3)
    assert result["label"] == expected.label  # the label widget's text
    assert result["rejected"] == expected.rejected
    assert [label for label, _ in result["top_k"]] == [label for label, _ in expected.top_k]
    assert result["score"] == pytest.approx(expected.score, abs=1e-5)


def test_typed_query_shows_the_classifiers_label(run_app: Any, bundle: Path) -> None:
    classifier = Classifier.load(bundle, threads=1)
    app = run_app(bundle)
    app.wait_for("loading")
    app.wait_for("ready")
    app.focus()
    first, second = "what is my account balance", "set an alarm for seven"
    app.xdotool("type", "--delay", "30", first)
    _check_shows(app.wait_for("result", text=first), classifier, first)

    app.xdotool("key", "--delay", "10", *["BackSpace"] * len(first))
    assert app.wait_for("empty")["label"] == ""
    app.xdotool("type", "--delay", "30", second)
    _check_shows(app.wait_for("result", text=second), classifier, second)

    assert app.close() == 0
    assert "Traceback" not in app.stderr, app.stderr


def _damage(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "damaged"
    shutil.copytree(bundle, copy)
    model = bytearray((copy / "model.onnx").read_bytes())
    model[len(model) // 2] ^= 0xFF  # same size, different bytes
    (copy / "model.onnx").write_bytes(model)
    return copy


@pytest.mark.parametrize("case", ["missing", "damaged"])
def test_bad_bundle_shows_a_message_not_a_traceback(
    run_app: Any, bundle: Path, tmp_path: Path, case: str
) -> None:
    path = tmp_path / "no-such-bundle" if case == "missing" else _damage(bundle, tmp_path)
    app = run_app(path)
    shown = app.wait_for("error")
    assert shown["label"] == "Cannot use this bundle"
    expected = f"{path} does not exist" if case == "missing" else "model.onnx: sha256 mismatch"
    assert expected in shown["detail"] and "make bundle" in shown["detail"]

    app.focus()  # the window is up and still answers: typing into the disabled box changes nothing
    app.xdotool("type", "--delay", "30", "hello")
    time.sleep(0.5)
    assert app.proc.poll() is None, f"the app exited; stderr:\n{app.stderr}"
    assert app.close() == 0
    assert app.rest() == []  # nothing else was shown after the error
    assert "Traceback" not in app.stderr, app.stderr
