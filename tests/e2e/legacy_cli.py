"""The classic openai 0.28.1 CLI, installed from PyPI into a virtualenv of its own (cached under
.cache/, rebuilt when missing), run as a subprocess against a Whetstone server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from tests.conftest import REPO

VERSION = "0.28.1"
VENV = REPO / ".cache" / f"openai-{VERSION}-datalib"  # datalib: pandas, for `openai tools fine_tunes.prepare_data`


def legacy_openai() -> Path:
    """The `openai` script of a virtualenv holding openai[datalib]==0.28.1 and nothing of ours."""
    script = VENV / "bin" / "openai"
    if not script.exists():
        building = VENV.with_name(f"{VENV.name}.{uuid.uuid4().hex[:6]}.partial")
        subprocess.run([sys.executable, "-m", "venv", str(building)], check=True)
        subprocess.run([str(building / "bin" / "pip"), "install", "--quiet", f"openai[datalib]=={VERSION}"], check=True,
                       timeout=600)
        shutil.rmtree(VENV, ignore_errors=True)
        building.rename(VENV)  # scripts keep the path they were built under: run them through python
    return script


def run_cli(base_url: str, key: str, *args: str, stdin: str = "", timeout: float = 900, cwd: Path | None = None) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "OPENAI_API_KEY": key,
           "OPENAI_API_BASE": base_url}
    result = subprocess.run([str(VENV / "bin" / "python"), str(legacy_openai()), *args], env=env, input=stdin,
                            capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert result.returncode == 0, f"openai {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout
