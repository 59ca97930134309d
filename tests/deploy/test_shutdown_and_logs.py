"""A real `whetstone serve` process: SIGTERM lets an in-flight request finish, ends an open job
event stream cleanly, and the process exits 0; its logs are JSON lines with request ids.
A real `whetstone worker` process logs with the job id of the job it runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import REDIS_URL, TINY, Api, new_key
from tests.data import chat_jsonl
from tests.e2e.server import WHETSTONE, cli, free_port, process, wait_healthy


def _env(settings, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "WHETSTONE_DATA_DIR": str(tmp_path / "data"),
            "WHETSTONE_DATABASE_URL": settings.resolved_database_url, "WHETSTONE_BROKER_URL": REDIS_URL,
            "WHETSTONE_QUEUE": settings.queue, "WHETSTONE_BASE_MODELS_DIR": str(settings.base_models_dir),
            "WHETSTONE_LOG_FORMAT": "json", **extra}


def _json_lines(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def test_sigterm_drains_requests_and_closes_event_streams(settings, tmp_path):
    env = _env(settings, tmp_path, WHETSTONE_SHUTDOWN_GRACE="30")
    key = cli(env, "keys", "create", "--project", f"p{uuid.uuid4().hex[:8]}")
    headers = {"Authorization": f"Bearer {key}"}
    port, log = free_port(), tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*WHETSTONE, "serve", "--port", str(port), "--no-worker"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(proc, base, log)
        file_id = httpx.post(f"{base}/v1/files", headers=headers, data={"purpose": "fine-tune"},
                             files={"file": ("t.jsonl", chat_jsonl())}).json()["id"]
        job = httpx.post(f"{base}/v1/fine_tuning/jobs", headers=headers,
                         json={"model": TINY, "training_file": file_id}).json()  # no worker: it stays open

        stream: dict = {"lines": [], "error": None, "ended_at": None}

        def follow() -> None:
            try:
                with httpx.stream("GET", f"{base}/v1/fine_tuning/jobs/{job['id']}/events", params={"stream": "true"},
                                  headers=headers, timeout=httpx.Timeout(5, read=60)) as response:
                    for line in response.iter_lines():
                        stream["lines"].append(line)
            except Exception as exc:  # noqa: BLE001 - the test reports it
                stream["error"] = exc
            stream["ended_at"] = time.monotonic()

        content = chat_jsonl()
        upload: dict = {}

        def slow_body():
            for i in range(0, len(content), len(content) // 8 + 1):
                yield content[i:i + len(content) // 8 + 1]
                time.sleep(0.5)

        def slow_upload() -> None:
            boundary = "whetstoneboundary"
            head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
                    f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.jsonl\"\r\n"
                    "Content-Type: application/octet-stream\r\n\r\n").encode()
            tail = f"\r\n--{boundary}--\r\n".encode()

            def body():
                yield head
                yield from slow_body()
                yield tail
            try:
                upload["response"] = httpx.post(f"{base}/v1/files", content=body(), timeout=60, headers={
                    **headers, "Content-Type": f"multipart/form-data; boundary={boundary}", "x-request-id": "req_slow"})
            except Exception as exc:  # noqa: BLE001
                upload["error"] = exc

        follower, uploader = threading.Thread(target=follow), threading.Thread(target=slow_upload)
        follower.start()
        while not any(line.startswith("data: ") for line in stream["lines"]):
            time.sleep(0.1)
        uploader.start()
        time.sleep(1.0)  # the upload is half-way through its body
        signalled = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)

        follower.join(timeout=20)
        uploader.join(timeout=40)
        assert proc.wait(timeout=40) == 0, log.read_text()[-3000:]
        exited = time.monotonic()

        # The event stream ended promptly and cleanly: no error, whole events, no [DONE] (the job
        # is not over: the client reconnects with Last-Event-ID).
        assert stream["error"] is None, stream["error"]
        assert stream["ended_at"] - signalled < 5
        data = [line for line in stream["lines"] if line.startswith("data: ")]
        assert data and "data: [DONE]" not in data
        assert all(json.loads(line.removeprefix("data: "))["object"] == "fine_tuning.job.event" for line in data)
        # The in-flight upload was let finish.
        assert "error" not in upload, upload.get("error")
        assert upload["response"].status_code == 200, upload["response"].text
        assert upload["response"].json()["bytes"] == len(content)
        assert exited - signalled < 25
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    records = _json_lines(log)
    slow = [r for r in records if r.get("request_id") == "req_slow" and r["logger"] == "whetstone.access"]
    assert slow and slow[0]["status"] == 200 and slow[0]["route"] == "/v1/files"
    assert any(r["logger"] == "whetstone.shutdown" for r in records)
    assert {"ts", "level", "logger", "message"} <= set(records[0])


def test_worker_logs_carry_the_job_id_and_serves_metrics(settings, tmp_path):
    metrics_port = free_port()
    env = _env(settings, tmp_path, WHETSTONE_QUEUE=f"whetstone-logs-{uuid.uuid4().hex[:8]}",
               WHETSTONE_WORKER_METRICS_PORT=str(metrics_port))
    queued = settings.model_copy(update={"queue": env["WHETSTONE_QUEUE"]})
    with TestClient(create_app(queued)) as client:
        api = Api(client, new_key(queued))
        file_id = api.upload(chat_jsonl()).json()["id"]
        job = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": file_id,
                                                      "hyperparameters": {"n_epochs": 1}}).json()
        log = tmp_path / "worker.log"
        with process(env, ["worker"], log):
            deadline = time.monotonic() + 180
            while api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] not in {"succeeded", "failed"}:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
            # The worker's own metrics endpoint answers (GPU memory would be there on a GPU host).
            scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
            assert scraped.status_code == 200 and "process_cpu_seconds_total" in scraped.text
            assert "whetstone_gpu_memory" not in scraped.text  # no GPU on this machine
    records = _json_lines(log)
    tagged = [r for r in records if r.get("job_id") == job["id"]]
    assert tagged, log.read_text()[-3000:]
    assert any("succeeded" in r["message"] for r in tagged), [r["message"] for r in tagged]


def test_sigterm_to_serve_hands_the_embedded_workers_job_back(tmp_path, base_models_dir):
    """`whetstone serve` with the embedded worker, SIGTERMed mid-job (as `docker stop` does to its
    main process): the job is checkpointed and goes back to the queue, not left `running` by a
    cold stop, and a worker then resumes it from that checkpoint. (The next worker's reaper sending
    it is covered with real worker processes in tests/worker/test_worker_processes.py.)"""
    from sqlalchemy import select

    from app.core.config import Settings
    from app.core.db import session_scope
    from app.models import FineTuningJob
    from worker.tasks import run_job

    env = {**os.environ, "WHETSTONE_DATA_DIR": str(tmp_path / "data"), "WHETSTONE_BASE_MODELS_DIR": str(base_models_dir)}
    for name in ("WHETSTONE_DATABASE_URL", "WHETSTONE_BROKER_URL", "WHETSTONE_QUEUE"):
        env.pop(name, None)
    key = cli(env, "keys", "create", "--project", "demo")
    headers = {"Authorization": f"Bearer {key}"}
    log = tmp_path / "serve.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with process(env, ["serve", "--port", str(port)], log) as proc:
        wait_healthy(proc, base, log)
        file_id = httpx.post(f"{base}/v1/files", headers=headers, data={"purpose": "fine-tune"},
                             files={"file": ("t.jsonl", chat_jsonl(20))}).json()["id"]
        job_id = httpx.post(f"{base}/v1/fine_tuning/jobs", headers=headers, json={
            "model": TINY, "training_file": file_id, "hyperparameters": {"n_epochs": 4}}).json()["id"]
        deadline = time.monotonic() + 240
        while sum(e["type"] == "metrics" for e in httpx.get(
                f"{base}/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000}, headers=headers).json()["data"]) < 3:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # the main process only
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    assert "Cold shutdown" not in log.read_text() and "SIGKILL" not in log.read_text()

    settings = Settings(data_dir=tmp_path / "data", base_models_dir=base_models_dir)
    url = settings.resolved_database_url
    with session_scope(url) as session:
        row = session.scalar(select(FineTuningJob).where(FineTuningJob.id == job_id))
        assert (row.status, row.lease_owner) == ("queued", None)  # handed back, held by no one
        assert row.enqueued_at is None  # no message sent by the worker that was leaving: the reapers send it
    run_job(settings, job_id)
    with session_scope(url) as session:
        row = session.scalar(select(FineTuningJob).where(FineTuningJob.id == job_id))
        assert row.status == "succeeded", row.error
        messages = [e.message for e in sorted(row_events(session, row.pk), key=lambda e: e.pk)]
    handed = messages.index("The worker is shutting down: the job is checkpointed and goes back to the queue")
    resumed = [m for m in messages[handed:] if m.startswith("Fine-tuning job resumed from the checkpoint at step ")]
    assert len(resumed) == 1 and messages.count("Fine-tuning job started") == 1


def row_events(session, job_pk: int):  # noqa: ANN001
    from sqlalchemy import select

    from app.models import JobEvent

    return session.scalars(select(JobEvent).where(JobEvent.job_pk == job_pk)).all()
