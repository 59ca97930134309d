"""Dependency hygiene (issue 16): every dependency pinned in constraints.txt (what `make install`
and the Dockerfiles install), starlette and python-multipart past their multipart DoS and
traversal advisories, and pip-audit finding no known vulnerability in what is pinned."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
CONSTRAINTS = REPO / "constraints.txt"
# The first versions past every advisory named in pyproject.toml.
FLOORS = {"starlette": "1.3.1", "python-multipart": "0.0.30"}


def pinned() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, exact = line.partition("==")
            assert exact, f"constraints.txt: {line!r} is not an exact pin"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = exact
    return pins


def test_every_dependency_is_pinned_in_constraints():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    pins = pinned()
    for requirement in wanted:
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name], requirement)


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_multipart_stack_is_past_its_advisories(package):
    assert Version(pinned()[package]) >= Version(FLOORS[package])
    assert version(package) == pinned()[package]  # and that is what runs here


def _audit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip_audit", "--no-deps", "--disable-pip", "--progress-spinner",
                           "off", *args], capture_output=True, text=True, timeout=600)


def _service_that_answers(tmp_path: Path) -> str | None:
    """A vulnerability service pip-audit can use from here: it must flag a release with a known
    advisory (starlette 0.38.6, CVE-2024-47874). None when none does (no internet: PyPI's
    per-release JSON or OSV out of reach)."""
    canary = tmp_path / "canary.txt"
    canary.write_text("starlette==0.38.6\n")
    for service in ("pypi", "osv"):
        result = _audit("--vulnerability-service", service, "-r", str(canary))
        if result.returncode == 1 and "starlette" in result.stdout and "0.38.6" in result.stdout:
            return service
    return None


def test_pip_audit_finds_no_known_vulnerability_in_the_constraints(tmp_path):
    service = _service_that_answers(tmp_path)
    if service is None:
        pytest.skip("no vulnerability service reachable (pip-audit could not flag starlette 0.38.6 through PyPI's "
                    "JSON API or OSV): this audit runs where the internet is")
    result = _audit("--vulnerability-service", service, "--strict", "-r", str(CONSTRAINTS))
    assert result.returncode == 0, result.stdout + result.stderr
