"""The commands the Dockerfiles and the compose file run exist, and the settings they set are real."""

from __future__ import annotations

import json
import re

import yaml
from click.testing import CliRunner

from app.cli import main
from app.core.config import Settings
from tests.conftest import REPO


def _commands() -> list[list[str]]:
    found = []
    for name in ("Dockerfile.api", "Dockerfile.worker"):
        for line in (REPO / name).read_text().splitlines():
            if line.startswith("CMD "):
                found.append(json.loads(line.removeprefix("CMD ")))
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    found += [s["command"] for s in compose["services"].values() if "command" in s]
    return found


def test_every_command_is_a_whetstone_subcommand():
    commands = _commands()
    assert len(commands) >= 3
    for command in commands:
        assert command[0] == "whetstone"
        result = CliRunner().invoke(main, [*command[1:], "--help"])
        assert result.exit_code == 0, (command, result.output)


def test_every_environment_variable_is_a_setting():
    fields = {f"WHETSTONE_{name.upper()}" for name in Settings.model_fields}
    text = "".join((REPO / n).read_text() for n in ("Dockerfile.api", "Dockerfile.worker", "docker-compose.yml"))
    named = set(re.findall(r"WHETSTONE_[A-Z_]+", text))
    assert named and named <= fields, named - fields
