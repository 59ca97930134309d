"""Upload throughput: a large JSONL through `POST /v1/files` (validated on the way) vs copying the
same file on this disk, in one run; and how much the server's memory grows meanwhile.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/upload.py --size-mb 1024   # the issue's figure
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/upload.py                  # quick: 128 MB

References, measured right before the upload on the same (page-cached) file:
- `cat FILE > /dev/null`: reading it (the issue's "copy speed"; goal: upload >= 0.5x its MB/s);
- `cp FILE COPY && sync COPY`: an actual copy onto the disk, durable like the stored upload.
The client is curl (`-F file=@...`), so the client costs little CPU next to the server. The server
is a real `whetstone serve` on a fresh Postgres database; its RSS is sampled every 20 ms (goal:
growth < 64 MB). The generated file is kept under --cache-dir for the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from common import api_server, base_models_dir, fresh_database, load, rss_bytes

WORDS = ("the model learns to answer questions about invoices shipping returns refunds and warranty terms "
         "politely in one or two sentences citing the policy number when it is known").split()


def make_jsonl(path: Path, size: int) -> Path:
    """Chat examples of a few hundred bytes each, as many as fit in `size` bytes (kept for later runs)."""
    if path.is_file() and size - (1 << 20) < path.stat().st_size <= size:
        return path
    rng = random.Random(0)
    partial = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with partial.open("wb") as out:
        i = 0
        while written < size:
            lines = []
            for _ in range(1000):
                text = " ".join(rng.choices(WORDS, k=rng.randint(10, 60)))
                lines.append(json.dumps({"messages": [
                    {"role": "system", "content": "You are a helpful support agent."},
                    {"role": "user", "content": f"Question {i}: {text}?"},
                    {"role": "assistant", "content": f"Answer {i}: {text[::-1]}."}]}))
                i += 1
            chunk = ("\n".join(lines) + "\n").encode()
            if written + len(chunk) > size:  # the last lines that fit, and stop
                chunk = chunk[:chunk.rindex(b"\n", 0, size - written + 1) + 1] if b"\n" in chunk[:size - written] else b""
                out.write(chunk)
                break
            out.write(chunk)
            written += len(chunk)
    os.replace(partial, path)
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (load-independent, unlike wall time)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(cmd: str) -> float:
    started = time.perf_counter()
    subprocess.run(["bash", "-c", cmd], check=True)
    return time.perf_counter() - started


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=128, help="file size in MiB (the issue asks for 1024)")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "whetstone-bench")
    args = parser.parse_args()
    size = args.size_mb << 20
    path = make_jsonl(args.cache_dir / f"upload-{args.size_mb}MB.jsonl", size)
    actual = path.stat().st_size
    mb = actual / 1e6
    print(f"file: {path} ({mb:.0f} MB, {sum(1 for _ in path.open('rb'))} lines)")
    print(f"before: {load()}", flush=True)
    # The upload caps (issue 16) are not what is measured: room for this file's bytes and lines.
    caps = {"max_upload_bytes": str(2 * size + (1 << 20)), "max_upload_lines": str(2 * size // 100)}
    with base_models_dir() as models, fresh_database() as url, api_server(url, models, **caps) as server:
        timed(f"cat {path} > /dev/null")  # warm the page cache, as it will be for curl
        cat_s = timed(f"cat {path} > /dev/null")
        with tempfile.TemporaryDirectory(dir=server.data_dir) as tmp:
            cp_s = timed(f"cp {path} {tmp}/copy && sync {tmp}/copy")
        rss_before, cpu_before = rss_bytes(server.pid), cpu_seconds(server.pid)
        sampler = RssSampler(server.pid)
        sampler.start()
        out = server.data_dir / "response.json"
        started = time.perf_counter()
        status = subprocess.run(
            ["curl", "-sS", "-o", str(out), "-w", "%{http_code}", "-H", f"Authorization: Bearer {server.key}",
             "-F", "purpose=fine-tune", "-F", f"file=@{path};type=application/jsonl", f"{server.base}/files"],
            check=True, capture_output=True, text=True).stdout
        upload_s = time.perf_counter() - started
        server_cpu = cpu_seconds(server.pid) - cpu_before
        sampler.stop.set()
        sampler.join()
        body = json.loads(out.read_text())
        assert status == "200" and body.get("bytes") == actual, (status, body)
    upload = mb / upload_s
    print(f"cat > /dev/null:     {mb / cat_s:8.0f} MB/s ({cat_s:.2f} s)")
    print(f"cp + sync:           {mb / cp_s:8.0f} MB/s ({cp_s:.2f} s)")
    print(f"POST /v1/files:      {upload:8.0f} MB/s ({upload_s:.2f} s, {body['id']})")
    print(f"server CPU during the upload: {server_cpu:.2f} s ({mb / server_cpu:.0f} MB per CPU-second)")
    print(f"upload / cat ratio:  {upload / (mb / cat_s):.3f}x  (goal >= 0.5)")
    print(f"upload / cp ratio:   {upload / (mb / cp_s):.3f}x")
    print(f"server RSS: {rss_before / 2**20:.0f} MiB before, peak {sampler.peak / 2**20:.0f} MiB, "
          f"growth {(sampler.peak - rss_before) / 2**20:.1f} MiB  (goal < 64)")
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
