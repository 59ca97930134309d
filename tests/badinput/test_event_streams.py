"""Job event streams (SSE) under limits, on a real uvicorn server (issue 16): a per-key cap on
open streams (429 beyond it), a maximum lifetime (the stream ends without [DONE], so the client
reconnects with Last-Event-ID), and a client that stops reading is dropped after the send
timeout, giving its slot back."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlparse

import httpx
from sqlalchemy import insert, select

from app.core.db import session_scope
from app.core.ids import new_id
from app.models import FineTuningJob, JobEvent
from tests.badinput.conftest import live_server
from tests.badinput.corpus import CHAT, TINY, jsonl
from tests.conftest import new_key


def waiting_job(base: str, key: str) -> str:
    """A job that stays waiting (no worker runs here), so its stream never ends on its own."""
    headers = {"Authorization": f"Bearer {key}"}
    training = httpx.post(f"{base}/v1/files", headers=headers, files={"file": ("t.jsonl", jsonl(CHAT, CHAT))},
                          data={"purpose": "fine-tune"}).json()["id"]
    job = httpx.post(f"{base}/v1/fine_tuning/jobs", headers=headers, json={"model": TINY, "training_file": training})
    assert job.status_code == 200, job.text
    return job.json()["id"]


def stream_status(base: str, key: str, job_id: str) -> int:
    with httpx.stream("GET", f"{base}/v1/fine_tuning/jobs/{job_id}/events?stream=true",
                      headers={"Authorization": f"Bearer {key}"}, timeout=10) as response:
        return response.status_code


def test_streams_per_key_are_capped_and_each_ends_at_its_lifetime(isolated_settings):
    with live_server(isolated_settings, max_streams_per_key=1, sse_max_stream_seconds=3,
                     events_heartbeat=1) as base:
        key = new_key(isolated_settings)
        job_id = waiting_job(base, key)
        opened = time.monotonic()
        with httpx.stream("GET", f"{base}/v1/fine_tuning/jobs/{job_id}/events?stream=true",
                          headers={"Authorization": f"Bearer {key}"}, timeout=30) as first:
            assert first.status_code == 200
            second = httpx.get(f"{base}/v1/fine_tuning/jobs/{job_id}/events?stream=true",
                               headers={"Authorization": f"Bearer {key}"}, timeout=10)
            assert second.status_code == 429, second.text
            assert second.json()["error"]["code"] == "too_many_streams"
            # A listing is not a stream: still allowed.
            assert httpx.get(f"{base}/v1/fine_tuning/jobs/{job_id}/events",
                             headers={"Authorization": f"Bearer {key}"}).status_code == 200
            body = first.read().decode()  # returns once the server ends the stream
        lived = time.monotonic() - opened
        assert 2.5 <= lived < 20, lived
        assert "Created fine-tuning job" in body and "[DONE]" not in body and "id: " in body
        assert ": keep-alive" in body  # heartbeats while nothing happens
        assert stream_status(base, key, job_id) == 200  # the slot came back


def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout(isolated_settings):
    with live_server(isolated_settings, max_streams_per_key=1, sse_send_timeout=1, sse_max_stream_seconds=0) as base:
        key = new_key(isolated_settings)
        job_id = waiting_job(base, key)
        with session_scope(isolated_settings.resolved_database_url) as session:
            job_pk = session.scalar(select(FineTuningJob.pk).where(FineTuningJob.id == job_id))
            session.execute(insert(JobEvent), [{"id": new_id("ftevent"), "job_pk": job_pk, "message": "m" * 2000}
                                               for _ in range(15_000)])  # ~30 MB of stream: more than any buffer
        url = urlparse(base)
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect((url.hostname, url.port))
        stalled.sendall(f"GET /v1/fine_tuning/jobs/{job_id}/events?stream=true HTTP/1.1\r\nHost: x\r\n"
                        f"Authorization: Bearer {key}\r\n\r\n".encode())
        try:
            time.sleep(0.5)
            assert stream_status(base, key, job_id) == 429  # the stalled client holds the key's one slot
            deadline = time.monotonic() + 30
            while stream_status(base, key, job_id) == 429:
                assert time.monotonic() < deadline, "the stalled stream was never dropped"
                time.sleep(0.5)
            # The server closed the stalled connection: reading what is buffered ends in EOF, not [DONE].
            stalled.settimeout(10)
            tail = b""
            while chunk := stalled.recv(1 << 20):
                tail = (tail + chunk)[-100:]
            assert b"[DONE]" not in tail
        finally:
            stalled.close()
