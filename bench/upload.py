"""Upload throughput: a large JSONL through `POST /v1/files` (validated on the way) vs copies of
the same file on this machine, in the same rounds; and how much the server's memory grows meanwhile.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/upload.py --size-mb 1024   # the issue's figure
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/upload.py                  # quick: 128 MB

References, measured in each round right before the upload, on the same file:
- `cp FILE COPY && sync COPY`: a copy onto the disk, durable as the stored upload is (it is
  fsynced before its row commits): the like-for-like reference (goal: upload >= 0.5x its MB/s);
- `cat FILE > /dev/null` with the file's pages dropped from the page cache first
  (posix_fadvise DONTNEED, this file only): reading the file off the disk. Only this file's, so
  that the upload after it does not pay for everyone's caches refilled: dropping the whole page
  cache (drop_caches) evicts the server's own code and Postgres's tables too, and the upload
  right after it measured 0.85x the MB/s (622 vs 731 MB/s, 1.59 vs 1.34 s of server CPU);
- `cat FILE > /dev/null` from the page cache: memory bandwidth, shown for scale;
- curl sending the same form to a null sink (a socket that drops what it reads, in this
  process): what the client and the loopback manage with no server work at all, the ceiling of
  any upload figure here; and the same for the sendfile client (below).
Each copy and each uploaded file is deleted after its round, so every round starts alike (on a VM,
writing into memory the guest has not used yet costs several times more than reusing it).
The measured server runs with the defaults: the lines checked by the compiled scanner in an API
thread, the bytes written past the page cache. Two baselines, uploaded to in the same rounds: for
the scanner, a server without it that checks with msgspec in two processes of its own, as uploads
were checked before it (WHETSTONE_LINE_SCANNER=off, WHETSTONE_UPLOAD_CHECK_PROCESSES=2); for
writing past the page cache, one that writes through it (WHETSTONE_STORAGE_DIRECT_IO=false).
The measured server takes each client's upload twice in a round: alone (the issue's figure), and
while another client lists files every 20 ms (its latency is what the upload costs everyone else,
and the upload's MB/s what that client costs the upload); the order of the two alternates by round.
The baselines are measured with that other client listing.
The client is curl (`-F file=@...`), and in the same rounds a second one that sends the same
form with os.sendfile (`send_form`: the file's bytes never pass through the client's user space),
so that the server's figure can be told apart from the client's: on a host with few cores, curl's
copying takes CPU the server could use. The servers are real `whetstone serve` processes on a fresh
Postgres database; a server's CPU time counts its upload check processes too, and its RSS is sampled
every 20 ms (goal: growth < 64 MB). The generated file is kept under --cache-dir for the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
from common import api_server, base_models_dir, fresh_database, load, percentile, rss_bytes

from app.services.upload_check_process import PER_UPLOAD
from worker.training.validation import COMPILED_SCANNER

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


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (field 3, the state, comes first)."""
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def cpu_seconds(fields: list[str]) -> float:
    """User + system CPU time of a process so far (load-independent, unlike wall time)."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of a process and of its children (the server's upload check processes), by pid."""
    out = {pid: cpu_seconds(stat_fields(pid))}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = stat_fields(int(entry))
            except OSError:  # gone meanwhile
                continue
            if int(fields[1]) == pid:
                out[int(entry)] = cpu_seconds(fields)
    return out


def evict(path: Path) -> None:
    """This file's pages out of the page cache (its next read comes off the disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # (dirty pages are not dropped)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def curl_form(path: Path, url: str, *headers: str) -> list[str]:
    """The upload's curl command: the form as the measured upload sends it."""
    return ["curl", "-sS", *(arg for header in headers for arg in ("-H", header)),
            "-F", "purpose=fine-tune", "-F", f"file=@{path};type=application/jsonl", url]


def send_form(path: Path, url: str, *headers: str) -> bytes:
    """POST the same multipart form as `curl_form`, the file's bytes sent with os.sendfile;
    returns the response's body (raises unless it is a 200)."""
    host, port = url.removeprefix("http://").split("/", 1)[0].split(":")
    boundary = "whetstone-bench-" + os.urandom(8).hex()
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            "Content-Type: application/jsonl\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = path.stat().st_size
    request = "".join([f"POST /{url.split('/', 3)[3]} HTTP/1.1\r\nHost: {host}:{port}\r\n", *(h + "\r\n" for h in headers),
                       f"Content-Type: multipart/form-data; boundary={boundary}\r\n",
                       f"Content-Length: {len(head) + size + len(tail)}\r\nConnection: close\r\n\r\n"]).encode()
    with socket.create_connection((host, int(port))) as sock, path.open("rb") as file:
        sock.sendall(request + head)
        sent = 0
        while sent < size:
            sent += os.sendfile(sock.fileno(), file.fileno(), sent, size - sent)
        sock.sendall(tail)
        response = b"".join(iter(lambda: sock.recv(1 << 16), b""))
    status, _, rest = response.partition(b"\r\n")
    assert status.split()[1] == b"200", response[:500]
    return rest.partition(b"\r\n\r\n")[2]


class NullSink(threading.Thread):
    """An HTTP endpoint that reads a request's body off the socket into one reused buffer and drops it
    (recv_into: no Python work per byte), then answers 200: curl and the loopback, with no server."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1/files"

    def run(self) -> None:
        buffer = memoryview(bytearray(1 << 20))
        while True:
            conn, _ = self.listener.accept()
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(65536)
                headers, _, body = head.partition(b"\r\n\r\n")
                fields = dict(line.split(b":", 1) for line in headers.lower().split(b"\r\n")[1:])
                if fields.get(b"expect", b"").strip() == b"100-continue":
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                left = int(fields[b"content-length"]) - len(body)
                while left > 0 and (n := conn.recv_into(buffer)):
                    left -= n
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")


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


class LatencyProbe(threading.Thread):
    """Another client of the same server meanwhile: `GET /v1/files?limit=1` every 20 ms, timed."""

    def __init__(self, server) -> None:
        super().__init__(daemon=True)
        self.server, self.times, self.stop = server, [], threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.server.base, headers={"Authorization": f"Bearer {self.server.key}"}) as http:
            while not self.stop.wait(0.02):
                started = time.perf_counter()
                http.get("/files", params={"limit": 1}).raise_for_status()
                self.times.append(time.perf_counter() - started)


def references(path: Path, mb: float, data_dir: Path, sink: NullSink) -> dict:
    row: dict = {}
    evict(path)
    row["cold cat"] = mb / timed(f"cat {path} > /dev/null")
    timed(f"cat {path} > /dev/null")  # warm the page cache, as it will be for curl
    row["cat"] = mb / timed(f"cat {path} > /dev/null")
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        row["cp + sync"] = mb / timed(f"cp {path} {tmp}/copy && sync {tmp}/copy")
    started = time.perf_counter()
    subprocess.run(curl_form(path, sink.url), check=True, capture_output=True)
    row["curl to a null sink"] = mb / (time.perf_counter() - started)
    started = time.perf_counter()
    send_form(path, sink.url)
    row["sendfile to a null sink"] = mb / (time.perf_counter() - started)
    return row


def client_cpu() -> float:
    """CPU seconds of this bench's curl children and of this thread (the sendfile client) so far."""
    return sum(getattr(usage, field) for usage in (resource.getrusage(resource.RUSAGE_CHILDREN),
               resource.getrusage(resource.RUSAGE_THREAD)) for field in ("ru_utime", "ru_stime"))


def upload(server, path: Path, mb: float, actual: int, sendfile: bool = False, lister: bool = True) -> dict:
    """One upload through curl (or `send_form`), measured, with another client listing files meanwhile
    if `lister`; its file deleted again afterwards."""
    rss_before, cpu_before = rss_bytes(server.pid), tree_cpu(server.pid)
    client_before = client_cpu()
    sampler, probe = RssSampler(server.pid), LatencyProbe(server)
    sampler.start()
    if lister:
        probe.start()
    out = server.data_dir / "response.json"
    started = time.perf_counter()
    if sendfile:
        out.write_bytes(send_form(path, f"{server.base}/files", f"Authorization: Bearer {server.key}"))
    else:
        status = subprocess.run(
            [*curl_form(path, f"{server.base}/files", f"Authorization: Bearer {server.key}"), "-o", str(out),
             "-w", "%{http_code}"], check=True, capture_output=True, text=True).stdout
        assert status == "200", status
    seconds = time.perf_counter() - started
    cpu_after = tree_cpu(server.pid)
    client_after = client_cpu()
    sampler.stop.set()
    probe.stop.set()
    sampler.join()
    if lister:
        probe.join()
    body = json.loads(out.read_text())
    assert body.get("bytes") == actual, body
    subprocess.run(["curl", "-sS", "-o", "/dev/null", "-X", "DELETE", "-H", f"Authorization: Bearer {server.key}",
                    f"{server.base}/files/{body['id']}"], check=True)
    row = {"MB/s": mb / seconds,
           "server CPU s": sum(cpu - cpu_before.get(pid, 0.0) for pid, cpu in cpu_after.items()),
           "API process CPU s": cpu_after[server.pid] - cpu_before[server.pid],
           "client CPU s": client_after - client_before,
           "RSS growth MiB": (sampler.peak - rss_before) / 2**20}
    if lister:
        row |= {"list p50 ms": 1000 * percentile(probe.times, 50), "list p99 ms": 1000 * percentile(probe.times, 99)}
    return row


ALONE = "upload alone"
SENDFILE_ALONE = "upload alone, sendfile client"
LISTED = "upload, another client listing"
SENDFILE_LISTED = "upload, sendfile client, another client listing"
MSGSPEC = "upload, checked by msgspec in 2 processes"
CACHED = "upload, written through the page cache"
MEASURED = {ALONE: (False, False), SENDFILE_ALONE: (True, False), LISTED: (False, True), SENDFILE_LISTED: (True, True)}


def sink_of(client: str) -> str:
    """The null-sink reference of a measured upload's client."""
    return "sendfile to a null sink" if MEASURED[client][0] else "curl to a null sink"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=128, help="file size in MiB (the issue asks for 1024)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "whetstone-bench")
    args = parser.parse_args()
    size = args.size_mb << 20
    path = make_jsonl(args.cache_dir / f"upload-{args.size_mb}MB.jsonl", size)
    actual = path.stat().st_size
    mb = actual / 1e6
    print(f"file: {path} ({mb:.0f} MB, {sum(1 for _ in path.open('rb'))} lines)")
    print(f"before: {load()}; the compiled line scanner is {'built' if COMPILED_SCANNER else 'NOT built'}", flush=True)
    # The upload caps (issue 16) are not what is measured: room for this file's bytes and lines.
    caps = {"max_upload_bytes": str(2 * size + (1 << 20)), "max_upload_lines": str(2 * size // 100)}
    rows = []
    sink = NullSink()
    sink.start()
    with (base_models_dir() as models, fresh_database() as url,
          api_server(url, models, **caps) as measured,
          api_server(url, models, **caps, line_scanner="off", upload_check_processes=str(PER_UPLOAD)) as msgspec,
          api_server(url, models, **caps, storage_direct_io="false") as cached):
        idle = LatencyProbe(measured)
        idle.start()
        time.sleep(2)
        idle.stop.set()
        idle.join()
        print(f"GET /v1/files with no upload running: p50 {1000 * percentile(idle.times, 50):.1f} ms, "
              f"p99 {1000 * percentile(idle.times, 99):.1f} ms", flush=True)
        for number in range(1, args.rounds + 1):
            row = references(path, mb, measured.data_dir, sink)
            order = list(MEASURED) if number % 2 else [*list(MEASURED)[2:], *list(MEASURED)[:2]]
            for key in order:
                sendfile, lister = MEASURED[key]
                row[key] = upload(measured, path, mb, actual, sendfile=sendfile, lister=lister)
            row[MSGSPEC] = upload(msgspec, path, mb, actual)
            row[CACHED] = upload(cached, path, mb, actual)
            rows.append(row)
            print(f"round {number}: " + "; ".join(
                f"{k} {v:.0f} MB/s" if isinstance(v, float) else
                f"{k} " + ", ".join(f"{vk} {vv:.2f}" for vk, vv in v.items()) for k, v in row.items()), flush=True)

    def median(get) -> float:
        return statistics.median(get(row) for row in rows)

    print(f"medians of {len(rows)} rounds:")
    for key in ("cold cat", "cat", "cp + sync", "curl to a null sink", "sendfile to a null sink"):
        print(f"  {key + ':':50s} {median(lambda r: r[key]):6.0f} MB/s")
    for key in (*MEASURED, MSGSPEC, CACHED):
        print(f"  {key + ':':50s} {median(lambda r: r[key]['MB/s']):6.0f} MB/s; server CPU "
              f"{median(lambda r: r[key]['server CPU s']):.2f} s (API process "
              f"{median(lambda r: r[key]['API process CPU s']):.2f} s), client {median(lambda r: r[key]['client CPU s']):.2f} s"
              + (f"; meanwhile GET /v1/files p50 {median(lambda r: r[key]['list p50 ms']):.1f} ms, "
                 f"p99 {median(lambda r: r[key]['list p99 ms']):.1f} ms" if "list p99 ms" in rows[0][key] else ""))
    print("ratios (median of the rounds' own; the issue's figure is the upload alone):")
    for client in MEASURED:
        for key in ("cp + sync", "cold cat", "cat", sink_of(client)):
            print(f"  {client + ' / ' + key + ':':70s} {median(lambda r: r[client]['MB/s'] / r[key]):.3f}x"
                  + ("  (goal >= 0.5)" if key in ("cp + sync", "cold cat") else ""))
    for key in (MSGSPEC, CACHED):
        print(f"  {LISTED} / {key}: {median(lambda r: r[LISTED]['MB/s'] / r[key]['MB/s']):.3f}x in MB/s, "
              f"{median(lambda r: r[LISTED]['API process CPU s'] / r[key]['API process CPU s']):.3f}x in the API "
              f"process's CPU, {median(lambda r: r[LISTED]['list p99 ms'] / r[key]['list p99 ms']):.3f}x in the "
              "other client's p99")
    growth = max(max(r[k]["RSS growth MiB"] for k in (*MEASURED, MSGSPEC, CACHED)) for r in rows)
    print(f"server RSS growth: {growth:.1f} MiB at most  (goal < 64)")
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
