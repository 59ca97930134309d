"""The HTTP layer alone: a large request body through the API's uvicorn protocol
(app/core/http_protocol.py) vs uvicorn's own httptools protocol, in the same rounds.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/http_body.py --size-mb 1024

Both servers run `server_config` (as `whetstone serve` does) with a bare ASGI app that reads the
body and drops it, so what is measured is the body's way from the socket to the app. The client
is `curl -T FILE -X POST` (it streams the file); the rounds alternate which server goes first.
Printed: MB/s (median of the rounds), the server's CPU seconds per upload, and the ratios.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import load
from upload import cpu_seconds, make_jsonl, stat_fields

from tests.e2e.server import free_port


async def sink(scope, receive, send) -> None:  # noqa: ANN001
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


def serve(port: int, protocol: str) -> None:
    import uvicorn

    from app.core.shutdown import server_config

    config = server_config(sink, "127.0.0.1", port, grace=1)
    if protocol == "uvicorn":
        config.http = "httptools"
    uvicorn.Server(config).run()


def start(protocol: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), protocol])
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}/"
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, f"{protocol} server did not start"
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/whetstone-bench"))
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "PROTOCOL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1])
        return
    path = make_jsonl(args.cache_dir / f"upload-{args.size_mb}MB.jsonl", args.size_mb << 20)
    size = path.stat().st_size
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # from the page cache, for curl
    print(f"file: {path} ({size / 1e6:.0f} MB); {load()}")
    names = {"ours": "app/core/http_protocol.py", "uvicorn": "uvicorn's httptools protocol"}
    servers = {name: start(name) for name in names}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    try:
        for round_ in range(args.rounds):
            for name in names if round_ % 2 == 0 else reversed(names):
                proc, url = servers[name]
                cpu = cpu_seconds(stat_fields(proc.pid))
                began = time.perf_counter()
                out = subprocess.run(["curl", "-sS", "-X", "POST", "-T", str(path), url],
                                     capture_output=True, text=True, check=True).stdout
                elapsed = time.perf_counter() - began
                assert int(out) == size, (name, out)
                results[name].append((size / elapsed / 1e6, cpu_seconds(stat_fields(proc.pid)) - cpu))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait()
    medians = {}
    for name, label in names.items():
        rates, cpus = [r for r, _ in results[name]], [c for _, c in results[name]]
        medians[name] = statistics.median(rates), statistics.median(cpus)
        print(f"  {label:32} {medians[name][0]:6.0f} MB/s (rounds: {' '.join(f'{r:.0f}' for r in rates)}); "
              f"server CPU {medians[name][1]:.2f} s")
    print(f"ratio ours / uvicorn's: {medians['ours'][0] / medians['uvicorn'][0]:.2f}x in MB/s, "
          f"{medians['ours'][1] / medians['uvicorn'][1]:.2f}x in server CPU")
    print(load())


if __name__ == "__main__":
    main()
