"""`edgepack-run serve`: the real server in a subprocess on a loopback port, spoken to over real HTTP."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from edgepack_runtime import Classifier
from edgepack_runtime.serve_process import RunningServer, running_server

from . import tiny_onnx
from .bundle_kit import replace_file, write_bundle

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install './runtime[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install './runtime[serve]'")

START_TIMEOUT = 120.0  # generous: CI machines may be busy; nothing here measures time


def request(
    server: RunningServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def post(server: RunningServer, payload: Any) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    return request(server, "POST", "/classify", json.dumps(payload).encode(), headers)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("serve") / "tiny", tiny_onnx.classifier_graph())


@pytest.fixture(scope="module")
def server(bundle: Path) -> Iterator[RunningServer]:
    args = ("--max-texts", "8", "--max-body-bytes", "4096", "--threads", "2")
    with running_server(bundle, *args, timeout=START_TIMEOUT) as running:
        yield running
        assert running.stop() == 0, running.stderr


@pytest.fixture(scope="module")
def clf(bundle: Path) -> Classifier:
    return Classifier.load(bundle)


def record(clf: Classifier, text: str, top_k: int = 3) -> dict[str, Any]:
    return {"text": text[: clf.max_chars], **clf.predict(text, top_k=top_k).to_dict()}


# -- answers -------------------------------------------------------------------------------------------------


def test_health_and_manifest(server: RunningServer, clf: Classifier) -> None:
    status, body = request(server, "GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["bundle"] == "tiny"
    status, body = request(server, "GET", "/manifest")
    assert status == 200
    assert body["name"] == "tiny" and body["labels"] == clf.labels and body["max_chars"] == clf.max_chars
    assert body["files"]["model.onnx"]["sha256"] == clf.spec.files["model.onnx"].sha256
    assert body["limits"]["max_texts"] == 8 and body["threads"] == 2


def test_one_text_is_answered_as_classify_prints_it(server: RunningServer, clf: Classifier) -> None:
    status, body = post(server, {"text": "book a flight for tomorrow"})
    assert status == 200
    assert body == record(clf, "book a flight for tomorrow")
    assert set(body) == {"text", "label", "score", "top_k", "rejected", "oos_score"}


def test_a_list_is_answered_in_order(server: RunningServer, clf: Classifier) -> None:
    texts = ["hi", "weather today in paris", "", "set an alarm"]
    status, body = post(server, {"texts": texts, "top_k": 2})
    assert status == 200
    expected = clf.predict_batch(texts, batch_size=len(texts), top_k=2)
    assert body == {"results": [{"text": t, **p.to_dict()} for t, p in zip(texts, expected, strict=True)]}
    assert [r["label"] for r in body["results"]] == [clf.predict(t).label for t in texts]


def test_a_huge_text_is_cut_as_the_runtime_cuts_it_and_says_so(
    server: RunningServer, clf: Classifier
) -> None:
    text = "book a flight " * (clf.max_chars // 4)
    status, body = post(server, {"text": text[: 4000 - 20]})  # inside the 4096-byte body limit
    assert status == 200
    assert body["truncated"] is True and len(body["text"]) == clf.max_chars
    assert {k: v for k, v in body.items() if k != "truncated"} == record(clf, text[: 4000 - 20])
    status, body = post(server, {"texts": ["hi", text[:1500]]})
    assert status == 200 and "truncated" not in body["results"][0] and body["results"][1]["truncated"]


def test_concurrent_clients_get_exactly_what_predict_gives(server: RunningServer, clf: Classifier) -> None:
    words = ("pin", "flight", "weather", "music")
    texts = [f"{word} please tell me {n}" for n in range(12) for word in words]

    def ask(text: str) -> dict[str, Any]:
        status, body = post(server, {"text": text})
        assert status == 200
        return body

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(ask, texts * 3))
    assert answers == [record(clf, t) for t in texts * 3]


# -- bad input: a 4xx with a JSON reason, and the server goes on ---------------------------------------------

BAD = [
    ("invalid JSON", b'{"text": "hi"', 400, "not valid JSON"),
    ("empty body", b"", 400, "empty"),
    ("not UTF-8", b'{"text": "caf\xe9"}', 400, "not valid UTF-8"),
    ("lone surrogate", b'{"text": "\\ud800 hi"}', 400, "not valid Unicode"),
    ("lone surrogate in a list", b'{"texts": ["ok", "\\udfff"]}', 400, "texts[1] is not valid Unicode"),
    ("array body", b'["hi"]', 422, "the body is an array"),
    ("number text", b'{"text": 5}', 422, "text must be a string, got a number"),
    ("null text", b'{"text": null}', 422, "got null"),
    ("texts not a list", b'{"texts": "hi"}', 422, "texts must be a list"),
    ("non-string item", b'{"texts": ["hi", {"a": 1}]}', 422, "texts[1] must be a string, got an object"),
    ("empty list", b'{"texts": []}', 422, "texts is empty"),
    ("unknown key", b'{"txt": "hi"}', 422, "unknown key(s) 'txt'"),
    ("both keys", b'{"text": "a", "texts": ["b"]}', 422, "exactly one"),
    ("top_k zero", b'{"text": "a", "top_k": 0}', 422, "top_k must be an integer"),
    ("top_k string", b'{"text": "a", "top_k": "3"}', 422, "top_k must be an integer"),
    ("top_k bool", b'{"text": "a", "top_k": true}', 422, "top_k must be an integer"),
    ("top_k huge", b'{"text": "a", "top_k": 1000}', 422, "from 1 to 5"),
    ("too many texts", json.dumps({"texts": ["hi"] * 9}).encode(), 413, "at most 8 per request"),
    ("body too large", json.dumps({"text": "x" * 5000}).encode(), 413, "at most 4,096"),
]


@pytest.mark.parametrize(("body", "status", "reason"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_gets_a_4xx_with_a_reason(
    server: RunningServer, body: bytes, status: int, reason: str
) -> None:
    got, answer = request(server, "POST", "/classify", body)
    assert got == status
    assert reason in answer["error"]
    assert post(server, {"text": "hi"})[0] == 200  # and the server keeps serving


def test_a_body_too_large_is_refused_while_it_streams(server: RunningServer) -> None:
    # No Content-Length: the body comes in chunks, and is refused once past the limit.
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    try:
        chunks = (b'{"text": "' + b"x" * 1000 + b'"}' for _ in range(10))
        conn.request("POST", "/classify", body=chunks, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 413 and "4,096" in json.loads(response.read())["error"]
    finally:
        conn.close()
    assert post(server, {"text": "hi"})[0] == 200


def test_wrong_path_and_method_are_json(server: RunningServer) -> None:
    status, body = request(server, "GET", "/nothing")
    assert status == 404 and "Not Found" in body["error"]
    status, body = request(server, "GET", "/classify")
    assert status == 405 and "Method Not Allowed" in body["error"]


# -- starting and stopping -----------------------------------------------------------------------------------


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "edgepack_runtime.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT)


def test_a_damaged_bundle_is_refused_at_start(tmp_path: Path) -> None:
    folder = write_bundle(tmp_path / "damaged", tiny_onnx.classifier_graph())
    (folder / "labels.json").write_bytes(b'["a", "b"]')  # no longer the bytes the manifest records
    result = _run_cli("serve", str(folder), "--port", "0")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused" in lines[0] and "labels.json" in lines[0]
    other = write_bundle(tmp_path / "bad-graph", tiny_onnx.classifier_graph())
    replace_file(other, "model.onnx", b"not a graph")  # hashes match: the graph itself is refused
    result = _run_cli("serve", str(other), "--port", "0")
    assert result.returncode == 1 and "model.onnx" in result.stderr


def test_a_port_in_use_is_one_line(bundle: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = _run_cli("serve", str(bundle), "--port", str(taken.getsockname()[1]))
    assert result.returncode == 1 and "cannot listen on 127.0.0.1" in result.stderr


def test_without_the_extra_the_command_names_it(bundle: Path) -> None:
    script = (
        "import sys; sys.modules['uvicorn'] = None\n"
        "from edgepack_runtime.cli import main\n"
        f"main(['serve', {str(bundle)!r}])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "edgepack-runtime[serve]" in result.stderr and "uvicorn" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_drains_requests_in_flight_then_exits_cleanly(
    bundle: Path, clf: Classifier, sig: int
) -> None:
    body = json.dumps({"text": "book a flight for tomorrow"}).encode()
    with running_server(bundle, timeout=START_TIMEOUT) as running:
        with socket.create_connection((running.host, running.port), timeout=60) as conn:
            # A request in flight: headers and half of the body sent when the signal arrives.
            conn.sendall(b"POST /classify HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n")
            conn.sendall(f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
            time.sleep(0.5)  # let the server read the headers (no timing is asserted)
            running.process.send_signal(sig)
            time.sleep(0.5)
            conn.sendall(body[10:])
            response = b""
            while chunk := conn.recv(65536):
                response += chunk
        head, _, payload = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), response
        assert json.loads(payload) == record(clf, "book a flight for tomorrow")
        assert running.process.wait(timeout=60) == 0, running.stderr
        assert "stopped" in "".join(running.stderr)
    with pytest.raises(OSError):  # and it no longer listens
        socket.create_connection((running.host, running.port), timeout=5).close()


def test_several_workers_serve_and_stop(bundle: Path, clf: Classifier) -> None:
    with running_server(bundle, "--workers", "2", timeout=START_TIMEOUT) as running:
        for text in ("hi", "set an alarm", "weather today in paris"):
            assert post(running, {"text": text}) == (200, record(clf, text))
        assert running.stop() == 0, running.stderr


def test_serve_help_lists_the_limits() -> None:
    result = _run_cli("serve", "-h")
    assert result.returncode == 0
    for option in ("--threads", "--workers", "--max-texts", "--max-body-bytes", "--max-pending", "--host"):
        assert option in result.stdout
    assert os.linesep in result.stdout
