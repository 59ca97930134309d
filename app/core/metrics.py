"""Prometheus metrics: every metric Whetstone exports is defined here.

Two kinds:
- counters/histograms the code increments as things happen (request latency per route,
  inference tokens, adapter cache hits/misses) — process-local, like any Prometheus client;
- gauges read at scrape time from the shared state (jobs by status, queue depth, training
  tokens/s from the workers' metrics events) and the GPUs NVML sees, so every API replica
  reports the same cluster-wide numbers.

The inference engine records its work with `record_generation(...)` and
`record_adapter_lookup(...)`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from app.core.config import Settings

log = logging.getLogger("whetstone.metrics")
JOB_STATUSES = ("validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled")

REQUEST_LATENCY = Histogram(
    "whetstone_http_request_duration_seconds", "HTTP request latency by route template (streams: until the "
    "response starts)", ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
INFERENCE_TOKENS = Counter("whetstone_inference_tokens", "Tokens processed by inference (rate() = tokens/s)",
                           ["base_model", "kind"])
INFERENCE_TOKENS_PER_SECOND = Histogram(
    "whetstone_inference_request_tokens_per_second", "Completion tokens per second of each inference request",
    ["base_model"], buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000))
ADAPTER_CACHE = Counter("whetstone_adapter_cache_lookups", "LoRA adapter lookups in the inference engine's "
                        "cache", ["result"])


def record_generation(base_model: str, prompt_tokens: int, completion_tokens: int, seconds: float) -> None:
    """Call once per finished inference request (streamed or not)."""
    INFERENCE_TOKENS.labels(base_model, "prompt").inc(prompt_tokens)
    INFERENCE_TOKENS.labels(base_model, "completion").inc(completion_tokens)
    if seconds > 0 and completion_tokens:
        INFERENCE_TOKENS_PER_SECOND.labels(base_model).observe(completion_tokens / seconds)


def record_adapter_lookup(hit: bool) -> None:
    """Call each time a request needs an adapter: hit = it was already loaded."""
    ADAPTER_CACHE.labels("hit" if hit else "miss").inc()


def queue_depth(settings: Settings) -> int:
    """Messages waiting in the broker's queue for a worker."""
    url = settings.resolved_broker_url
    if url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:  # kombu keeps one list per priority step: name, name\x06\x163, ...
            names = [settings.queue] + [f"{settings.queue}\x06\x16{p}" for p in range(1, 10)]
            return sum(client.llen(n) for n in names)
        finally:
            client.close()
    if url.startswith("sqla+"):
        from sqlalchemy import inspect, text

        from app.core.db import engine_for

        with engine_for(url.removeprefix("sqla+")).connect() as conn:
            if not inspect(conn).has_table("kombu_message"):  # kombu makes its tables with the first message
                return 0
            return int(conn.execute(text(
                "SELECT count(*) FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id "
                "WHERE q.name = :q AND m.visible"), {"q": settings.queue}).scalar() or 0)
    raise ValueError(f"queue depth is not known for broker {url.split(':')[0]}")


class StateCollector(Collector):
    """Jobs by status, queue depth, training tokens/s: read from the database and broker per scrape."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from app.core.db import session_scope
        from app.models import FineTuningJob, JobEvent

        jobs = GaugeMetricFamily("whetstone_jobs", "Fine-tuning jobs by status", labels=["status"])
        speed = GaugeMetricFamily("whetstone_training_tokens_per_second", "Training throughput of each running "
                                  "job, from its latest metrics event", labels=["job"])
        try:
            with session_scope(self.settings.resolved_database_url) as session:
                counts = dict(session.execute(select(FineTuningJob.status, func.count())
                                              .group_by(FineTuningJob.status)).all())
                latest = (select(func.max(JobEvent.pk)).join(FineTuningJob, JobEvent.job_pk == FineTuningJob.pk)
                          .where(FineTuningJob.status == "running", JobEvent.type == "metrics")
                          .group_by(JobEvent.job_pk))
                rows = session.execute(select(FineTuningJob.id, JobEvent.data)
                                       .join(FineTuningJob, JobEvent.job_pk == FineTuningJob.pk)
                                       .where(JobEvent.pk.in_(latest))).all()
            for status in sorted(set(JOB_STATUSES) | set(counts)):
                jobs.add_metric([status], counts.get(status, 0))
            for job_id, data in rows:
                if isinstance(data, dict) and isinstance(data.get("tokens_per_second"), (int, float)):
                    speed.add_metric([job_id], float(data["tokens_per_second"]))
            yield jobs
            yield speed
        except Exception as exc:  # a scrape still answers; the gap shows in Prometheus
            log.warning("metrics: database unavailable: %s", exc)
        try:
            depth = queue_depth(self.settings)
            yield GaugeMetricFamily("whetstone_queue_depth", "Job messages waiting in the broker queue",
                                    value=depth)
        except Exception as exc:
            log.warning("metrics: broker unavailable: %s", exc)


class GpuCollector(Collector):
    """Memory of every GPU on this host, through NVML (nvidia-ml-py); nothing where there is none."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:
            return
        used = GaugeMetricFamily("whetstone_gpu_memory_used_bytes", "GPU memory in use", labels=["gpu"])
        total = GaugeMetricFamily("whetstone_gpu_memory_total_bytes", "GPU memory size", labels=["gpu"])
        try:
            for i in range(pynvml.nvmlDeviceGetCount()):
                info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i))
                used.add_metric([str(i)], float(info.used))
                total.add_metric([str(i)], float(info.total))
        finally:
            pynvml.nvmlShutdown()
        yield used
        yield total


def registry_for(settings: Settings) -> CollectorRegistry:
    """What one /metrics endpoint exports: the process-wide metrics plus this deployment's state."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_Forward(REGISTRY))
    registry.register(StateCollector(settings))
    registry.register(GpuCollector())
    return registry


def worker_registry() -> CollectorRegistry:
    """A worker host's endpoint: its process metrics and its GPUs (job state is the API's)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_Forward(REGISTRY))
    registry.register(GpuCollector())
    return registry


class _Forward(Collector):
    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self):
        yield from self.source.collect()
