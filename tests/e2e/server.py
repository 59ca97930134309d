"""Start the real `whetstone` processes for end-to-end tests and stop them afterwards."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

WHETSTONE = [sys.executable, "-m", "app.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def in_thread(app, grace: float = 5) -> Iterator[str]:  # noqa: ANN001
    """`app` served as `whetstone serve` serves it (app.core.shutdown.server_config), on a free
    port, in a thread of this process; yields its base URL once it listens."""
    import uvicorn

    from app.core.shutdown import server_config

    port = free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, grace))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:  # set once the app's startup has run and the socket listens
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def cli(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([*WHETSTONE, *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@contextmanager
def process(env: dict[str, str], args: list[str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("wb") as out:
        proc = subprocess.Popen([*WHETSTONE, *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:  # the test already stopped it (and everything it started)
            return
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_healthy(proc: subprocess.Popen, base: str, log: Path, timeout: float = 180) -> None:
    """Wait until the server at `base` answers /healthz (fail if the process dies first)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


@contextmanager
def server(env: dict[str, str], log: Path, *extra: str) -> Iterator[str]:
    port = free_port()
    with process(env, ["serve", "--port", str(port), *extra], log) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(proc, base, log)
        yield f"{base}/v1"
