"""`edgepack-run serve`: one verified bundle behind HTTP, as a Starlette app under uvicorn (extra `serve`).

Endpoints (every answer, errors included, is JSON):

  POST /classify   {"text": "..."} -> one record, as `edgepack-run classify` prints it:
                   {"text", "label", "score", "top_k": [{"label", "score"}], "rejected", "oos_score"}
                   (+ "truncated": true when the text was longer than the bundle reads; "text" is then
                   the part the model read). {"texts": [...]} -> {"results": [record, ...]} in input order.
                   Optional "top_k": classes listed per text (default 3).
  GET  /health     {"status": "ok", "bundle": name, ...}
  GET  /manifest   the bundle's summary: name, schema, labels, max length, target, out-of-scope rule, metrics,
                   file hashes, batch mode, and this server's limits.

Bad input is a 4xx with {"error": "..."} and the server goes on: 400 for a body that is not UTF-8 JSON or a
text that is not valid Unicode (a lone surrogate escape), 413 for a body over --max-body-bytes or more than
--max-texts texts, 422 for a body of the wrong shape or types (no text, an empty list, a number, an unknown
key, a bad top_k), 404 / 405 for a wrong path or method, 503 when more than --max-pending requests already
wait for a model thread (retry later).

Threads. One `Classifier` (verified at start) serves every request. Its ONNX Runtime sessions run with one
intra-op thread, and a pool of --threads threads runs the model calls: --threads requests run in parallel on
--threads cores, each call on its own thread (ONNX Runtime releases the GIL), while the event loop only
parses requests and writes answers. One model call for one query lasts about a millisecond: ONNX Runtime's
own intra-op pool would split it into slices too small to pay for their hand-offs, and its spinning threads
would compete with the other requests' calls for the same cores. A request waits for a free pool thread
rather than failing (up to --max-pending of them), so no request is lost to a busy loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from edgepack_runtime import __version__

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from edgepack_runtime.classifier import Classifier

EXTRA_HINT = "pip install 'edgepack-runtime[serve]'"
_ENV = "EDGEPACK_SERVE_SETTINGS"  # how `--workers N` hands the settings to each worker process
_KEYS = {"text", "texts", "top_k"}


class MissingExtra(RuntimeError):
    """starlette or uvicorn is not installed."""


def require_extra() -> None:
    """Raise MissingExtra naming the install line when the serve extra's packages are missing."""
    missing = []
    for module in ("starlette", "uvicorn"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise MissingExtra(
            f"serving needs {' and '.join(missing)}, from the runtime's 'serve' extra: {EXTRA_HINT}"
        )


@dataclass(frozen=True)
class Limits:
    """What one request may ask; beyond it the request gets a 4xx (or a 503 for max_pending)."""

    max_texts: int = 64  # texts per request
    max_body_bytes: int = 1 << 20  # request body, bytes
    max_pending: int = 256  # requests waiting for or in a model call, this process
    top_k: int = 3  # classes listed per text unless the request says

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class Settings:
    """Everything a worker process needs to build the app (JSON in an environment variable)."""

    bundle: str
    threads: int = 1
    strict: bool = False
    limits: Limits = Limits()
    public_key: str | None = None  # PEM text of the key the bundle must be signed with (--public-key)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Settings:
        data = json.loads(text)
        limits = Limits(**data["limits"])
        return cls(data["bundle"], data["threads"], data["strict"], limits, data.get("public_key"))


class Problem(Exception):
    """A request the server refuses: HTTP status and a sentence for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- reading a request ---------------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to exceed `limit` bytes: from Content-Length, or while
    it streams in (chunked uploads), so an oversized body is never held in memory."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Problem(400, f"Content-Length is not a number: {declared[:40]!r}")
        if int(declared) > limit:
            raise Problem(413, f"the body is {int(declared):,} bytes; at most {limit:,} (--max-body-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, f"the body is over {limit:,} bytes (--max-body-bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """UTF-8 JSON, or a 400 saying where it breaks."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise Problem(
            400, f"the body is not valid UTF-8 (byte 0x{body[err.start]:02x} at offset {err.start})"
        ) from None
    if not text.strip():
        raise Problem(400, 'the body is empty; send JSON such as {"text": "book a flight"}')
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        where = f"line {err.lineno}, column {err.colno}"
        raise Problem(400, f"the body is not valid JSON: {err.msg} ({where})") from None


def _type_name(value: Any) -> str:
    return {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string"}.get(
        type(value), "an array" if isinstance(value, list) else "an object"
    )


def _unicode(text: str, where: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise Problem(
            400,
            f"{where} is not valid Unicode: lone surrogate U+{ord(text[err.start]):04X} at character "
            f"{err.start} (JSON \\u escapes must pair surrogates)",
        ) from None
    return text


def parse_request(payload: Any, limits: Limits, num_labels: int) -> tuple[list[str], bool, int]:
    """(texts, single, top_k) from a parsed body, or a Problem naming what is wrong."""
    shape = 'send {"text": "..."} or {"texts": ["...", ...]}, optionally with "top_k"'
    if not isinstance(payload, dict):
        raise Problem(422, f"the body is {_type_name(payload)}; {shape}")
    unknown = sorted(set(payload) - _KEYS)
    if unknown:
        raise Problem(422, f"unknown key(s) {', '.join(map(repr, unknown))}; {shape}")
    if ("text" in payload) == ("texts" in payload):
        raise Problem(422, f"give exactly one of 'text' and 'texts'; {shape}")
    top_k = payload.get("top_k", limits.top_k)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= num_labels:
        raise Problem(422, f"top_k must be an integer from 1 to {num_labels}, got {json.dumps(top_k)[:40]}")
    if "text" in payload:
        text = payload["text"]
        if not isinstance(text, str):
            raise Problem(422, f"text must be a string, got {_type_name(text)}")
        return [_unicode(text, "text")], True, top_k
    texts = payload["texts"]
    if not isinstance(texts, list):
        raise Problem(422, f"texts must be a list of strings, got {_type_name(texts)}")
    if not texts:
        raise Problem(422, "texts is empty; send at least one text")
    if len(texts) > limits.max_texts:
        raise Problem(413, f"{len(texts)} texts; at most {limits.max_texts} per request (--max-texts)")
    for i, item in enumerate(texts):
        if not isinstance(item, str):
            raise Problem(422, f"texts[{i}] must be a string, got {_type_name(item)}")
        _unicode(item, f"texts[{i}]")
    return texts, False, top_k


def answer(clf: Classifier, texts: list[str], single: bool, top_k: int) -> dict[str, Any]:
    """The response body (runs on a model thread). A text longer than the bundle reads is cut as the
    runtime cuts it (clf.max_chars characters), and its record says so."""
    if single:
        predictions = [clf.predict(texts[0], top_k=top_k)]
    else:
        predictions = clf.predict_batch(texts, batch_size=max(1, min(len(texts), 64)), top_k=top_k)
    records = []
    for text, prediction in zip(texts, predictions, strict=True):
        record = {"text": text[: clf.max_chars], **prediction.to_dict()}
        if len(text) > clf.max_chars:
            record["truncated"] = True
        records.append(record)
    return records[0] if single else {"results": records}


def summary(clf: Classifier, limits: Limits, threads: int) -> dict[str, Any]:
    manifest, spec = clf.manifest, clf.spec
    oos = clf.oos
    return {
        "name": spec.name,
        "schema": manifest.get("schema"),
        "created": manifest.get("created"),
        "edgepack_version": manifest.get("edgepack_version"),
        "runtime_version": __version__,
        "labels": clf.labels,
        "max_length": clf.max_length,
        "max_chars": clf.max_chars,
        "target": {"name": spec.target_name, "cpu_features": list(spec.cpu_features)},
        "oos": None
        if oos is None
        else {
            "label": oos.label,
            "method": oos.method,
            "output": oos.output,
            "direction": oos.direction,
            "threshold": oos.threshold,
        },
        "metrics": manifest.get("metrics"),
        "files": {name: {"sha256": rec.sha256, "size": rec.size} for name, rec in spec.files.items()},
        "manifest_sha256": manifest.get("manifest_sha256"),
        "signed_by": clf.signed_by,
        "batch_mode": clf.batch_mode,
        "threads": threads,
        "limits": asdict(limits),
    }


# -- the app -------------------------------------------------------------------------------------------------


def create_app(clf: Classifier, limits: Limits = Limits(), threads: int = 1) -> Starlette:
    """The ASGI app around one loaded Classifier (its sessions should have threads=1: see the module doc)."""
    require_extra()
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="edgepack-model")
    pending = 0  # requests waiting for or in a model call; only the event loop thread changes it
    about = summary(clf, limits, threads)

    def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def classify(request: Request) -> Response:
        nonlocal pending
        try:
            payload = parse_json(await read_body(request, limits.max_body_bytes))
            texts, single, top_k = parse_request(payload, limits, len(clf.labels))
        except Problem as problem:
            return error(problem.status, problem.message)
        if pending >= limits.max_pending:
            busy = f"busy: {pending} requests already wait for the model (--max-pending)"
            return error(503, busy, {"Retry-After": "1"})
        pending += 1
        try:
            body = await asyncio.get_running_loop().run_in_executor(pool, answer, clf, texts, single, top_k)
        finally:
            pending -= 1
        return JSONResponse(body)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "bundle": clf.name, "pending": pending, "version": __version__})

    async def manifest(request: Request) -> Response:
        return JSONResponse(about)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        print(f"edgepack-run serve: error answering {request.url.path}: {exc!r}", file=sys.stderr)
        return error(500, "internal error (see the server log)")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        pool.shutdown(wait=True)  # after uvicorn has drained the in-flight requests

    routes = [
        Route("/classify", classify, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/manifest", manifest, methods=["GET"]),
    ]
    handlers: dict[Any, Callable[..., Any]] = {HTTPException: http_error, Exception: server_error}
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)


def load(settings: Settings) -> Classifier:
    from edgepack_runtime.classifier import Classifier

    key = settings.public_key.encode("latin-1") if settings.public_key is not None else None
    return Classifier.load(settings.bundle, threads=1, strict=settings.strict, public_key=key)


def worker_app() -> Starlette:
    """The app of one `--workers N` process (uvicorn's factory): settings from the environment."""
    settings = Settings.from_json(os.environ[_ENV])
    return create_app(load(settings), settings.limits, settings.threads)


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: any free port)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(
    settings: Settings,
    clf: Classifier | None,
    sock: socket.socket,
    workers: int,
    access_log: bool,
    graceful_timeout: float,
) -> None:
    """Serve on `sock` until SIGINT or SIGTERM, then stop taking connections, finish the requests in flight
    (up to graceful_timeout seconds) and return. With workers == 1, `clf` (the bundle verified at start) is
    served; with more, each worker process loads the bundle itself."""
    import uvicorn

    options: dict[str, Any] = {
        "log_level": "warning",
        "access_log": access_log,
        "timeout_graceful_shutdown": graceful_timeout,
        "server_header": False,
    }
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully; these handlers (active
    # again by then) turn that into a normal return, so a drained server exits 0.
    stopped_by: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, frame: stopped_by.append(number))
    if workers == 1:
        assert clf is not None
        config = uvicorn.Config(create_app(clf, settings.limits, settings.threads), **options)
        uvicorn.Server(config).run(sockets=[sock])
        return
    os.environ[_ENV] = settings.to_json()
    # uvicorn's supervisor starts the workers (each imports this module and calls worker_app), restarts one
    # that dies, and on SIGINT / SIGTERM stops them all, each draining its requests first.
    uvicorn.run(f"{__name__}:worker_app", factory=True, workers=workers, fd=sock.fileno(), **options)
