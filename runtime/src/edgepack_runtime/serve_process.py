"""`edgepack-run serve` started in a subprocess on a free loopback port, for tests and benchmarks: the server
needs the serve extra, this module only the standard library.

with running_server("bundles/clinc-int8", "--threads", "2") as server:
    urllib.request.urlopen(server.url + "/health")
"""

from __future__ import annotations

import http.client
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from os import PathLike

START_TIMEOUT = 120.0  # seconds: generous, as busy machines start Python and ONNX Runtime slowly
_STDERR_TAIL = 20  # lines of the server's stderr in a start error


class ServerStartError(RuntimeError):
    """The server exited, or did not print its address and answer GET /health, before the start timeout."""


@dataclass
class RunningServer:
    """A started `edgepack-run serve`: its address, its process and the lines of its stderr so far (a thread
    keeps reading them, so the pipe never fills up)."""

    process: subprocess.Popen[str]
    host: str
    port: int
    stderr: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The base URL, e.g. http://127.0.0.1:50123 (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send `sig` (unless the server has exited already) and wait for it: its exit code (0 after a clean
        stop on SIGTERM or SIGINT)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


@contextmanager
def running_server(
    bundle: str | PathLike[str], *args: str, timeout: float = START_TIMEOUT
) -> Iterator[RunningServer]:
    """Start `edgepack-run serve BUNDLE --port 0 ARGS` (this Python, `-m edgepack_runtime.cli`), wait for the
    address line it prints and for GET /health to answer 200, and yield the running server. On exit the
    server gets SIGTERM if it still runs (SIGKILL if it has not stopped a minute later).

    Raises ServerStartError, with the tail of the server's stderr, if it exits or does not answer within
    `timeout` seconds."""
    command = [sys.executable, "-m", "edgepack_runtime.cli", "serve", str(bundle), "--port", "0", *args]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        yield _wait_until_up(process, timeout)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_up(process: subprocess.Popen[str], timeout: float) -> RunningServer:
    deadline = time.monotonic() + timeout
    lines: queue.Queue[str | None] = queue.Queue()
    collected: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            collected.append(line)
            lines.put(line)
        lines.put(None)  # end of stderr: the server is exiting

    def failed(what: str, exited: bool = False) -> ServerStartError:
        if exited:  # its stderr has closed: wait (briefly) for its own exit code
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        killed = process.poll() is None
        if killed:
            process.kill()
            process.wait()
        status = f"killed after {timeout:g} s" if killed else f"exit code {process.returncode}"
        tail = "".join(collected[-_STDERR_TAIL:]).rstrip() or "(empty)"
        return ServerStartError(f"edgepack-run serve {what} ({status}); the end of its stderr:\n{tail}")

    threading.Thread(target=read, daemon=True).start()
    while True:  # the address line: "edgepack-run serve: NAME on http://HOST:PORT (...)"
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise failed("printed no address in time") from None
        if line is None:
            raise failed("exited before it printed its address", exited=True)
        if " on http://" in line:
            host, port = line.split(" on http://", 1)[1].split()[0].rsplit(":", 1)
            server = RunningServer(process, host.strip("[]"), int(port), collected)  # [::1] -> ::1
            break
    while True:  # the socket listens already; the app answers once uvicorn has started
        if process.poll() is not None:
            raise failed("exited before GET /health answered", exited=True)
        conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return server
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise failed("did not answer GET /health in time")
        time.sleep(0.05)
