"""The Uploads API: a large JSONL sent in parts (POST /v1/uploads/{id}/parts, then complete) vs the
same file in one POST /v1/files, on the same server, in the same rounds.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/uploads_api.py --size-mb 1024

The parts go up one after another with curl (`-F data=@part`), 64 MiB each (the default part
limit), from files cut once before the rounds; `complete` assembles them and checks the lines (the
same check as a single upload). Printed per round and as medians: wall time and the server's CPU
(its upload check processes included) for the parts, for complete, and for the single upload.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from common import api_server, base_models_dir, fresh_database, load
from upload import make_jsonl, tree_cpu

PART = 64 << 20


def cpu_since(before: dict[int, float], pid: int) -> float:
    return sum(cpu - before.get(p, 0.0) for p, cpu in tree_cpu(pid).items())


def in_parts(server, http: httpx.Client, path: Path, parts: list[Path]) -> dict:
    upload = http.post("/uploads", json={"filename": path.name, "purpose": "fine-tune", "bytes": path.stat().st_size,
                                         "mime_type": "application/jsonl"}).raise_for_status().json()
    before, started = tree_cpu(server.pid), time.perf_counter()
    ids = []
    for part in parts:
        out = subprocess.run(["curl", "-sS", "-H", f"Authorization: Bearer {server.key}", "-F", f"data=@{part}",
                              f"{server.base}/uploads/{upload['id']}/parts"], check=True, capture_output=True).stdout
        ids.append(json.loads(out)["id"])
    sent, parts_cpu = time.perf_counter(), cpu_since(before, server.pid)
    before = tree_cpu(server.pid)
    done = http.post(f"/uploads/{upload['id']}/complete", json={"part_ids": ids}, timeout=600).raise_for_status().json()
    finished = time.perf_counter()
    assert done["status"] == "completed", done
    http.delete(f"/files/{done['file']['id']}").raise_for_status()
    return {"parts s": sent - started, "parts CPU s": parts_cpu, "complete s": finished - sent,
            "complete CPU s": cpu_since(before, server.pid), "total s": finished - started}


def single(server, http: httpx.Client, path: Path) -> dict:
    before, started = tree_cpu(server.pid), time.perf_counter()
    out = subprocess.run(["curl", "-sS", "-H", f"Authorization: Bearer {server.key}", "-F", "purpose=fine-tune",
                          "-F", f"file=@{path};type=application/jsonl", f"{server.base}/files"],
                         check=True, capture_output=True).stdout
    seconds = time.perf_counter() - started
    http.delete(f"/files/{json.loads(out)['id']}").raise_for_status()
    return {"total s": seconds, "CPU s": cpu_since(before, server.pid)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "whetstone-bench")
    args = parser.parse_args()
    size = args.size_mb << 20
    path = make_jsonl(args.cache_dir / f"upload-{args.size_mb}MB.jsonl", size)
    mb = path.stat().st_size / 1e6
    print(f"file: {path} ({mb:.0f} MB); before: {load()}", flush=True)
    caps = {"max_upload_bytes": str(2 * size + (1 << 20)), "max_upload_lines": str(2 * size // 100)}
    rows = []
    with (tempfile.TemporaryDirectory(dir=args.cache_dir) as cut, base_models_dir() as models,
          fresh_database() as url, api_server(url, models, **caps) as server,
          httpx.Client(base_url=server.base, headers=server.headers) as http):
        data = path.read_bytes()
        parts = []
        for i in range(0, len(data), PART):
            parts.append(Path(cut) / f"part-{i // PART:04d}")
            parts[-1].write_bytes(data[i:i + PART])
        del data
        for number in range(1, args.rounds + 1):
            row = {"parts": in_parts(server, http, path, parts), "single": single(server, http, path)}
            rows.append(row)
            print(f"round {number}: " + "; ".join(f"{k}: " + ", ".join(f"{vk} {vv:.2f}" for vk, vv in v.items())
                                                 for k, v in row.items()), flush=True)

    def median(kind: str, key: str) -> float:
        return statistics.median(r[kind][key] for r in rows)

    print(f"medians of {len(rows)} rounds, {len(parts)} parts:")
    print(f"  Uploads API: parts {median('parts', 'parts s'):.2f} s (server CPU {median('parts', 'parts CPU s'):.2f} s), "
          f"complete {median('parts', 'complete s'):.2f} s (CPU {median('parts', 'complete CPU s'):.2f} s); "
          f"{mb / median('parts', 'total s'):.0f} MB/s in all")
    print(f"  one POST /v1/files: {median('single', 'total s'):.2f} s (server CPU {median('single', 'CPU s'):.2f} s); "
          f"{mb / median('single', 'total s'):.0f} MB/s")
    print(f"  Uploads API / one POST: {median('parts', 'total s') / median('single', 'total s'):.2f}x the time")


if __name__ == "__main__":
    main()
