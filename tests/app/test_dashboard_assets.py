"""The dashboard's files as the API serves them: the page at / without a key, every script and
style it loads from this server (nothing from elsewhere), and all of them shipped in the package."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

from app.dashboard import STATIC

ROOT = Path(__file__).resolve().parents[2]


def referenced_assets() -> set[str]:
    """Paths the page loads: src/href in index.html, and each module's relative imports."""
    html = (STATIC / "index.html").read_text()
    paths = {p for p in re.findall(r'(?:src|href)="([^"#]+)"', html) if p.startswith("/")}
    for module in (STATIC / "js").glob("*.js"):
        for name in re.findall(r'from "\./([\w.]+)"', module.read_text()):
            paths.add(f"/ui/js/{name}")
    return paths


def test_dashboard_page_and_its_assets_are_served_without_a_key(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="/ui/js/main.js"' in page.text
    assets = referenced_assets()
    assert {"/ui/js/main.js", "/ui/js/job.js", "/ui/js/sse.js", "/ui/vendor/uplot/uPlot.iife.min.js",
            "/ui/vendor/uplot/uPlot.min.css", "/ui/dashboard.css"} <= assets
    for path in assets:
        response = client.get(path)
        assert response.status_code == 200, path
        kind = "javascript" if path.endswith(".js") else "css"
        assert kind in response.headers["content-type"], (path, response.headers["content-type"])
    # The API itself still asks for a key.
    assert client.get("/v1/files").status_code == 401
    assert client.get("/ui/js/nothing.js").status_code == 404


def test_no_asset_is_fetched_from_another_host():
    for path in [STATIC / "index.html", *(STATIC / "js").glob("*.js"), STATIC / "dashboard.css"]:
        text = path.read_text()
        assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", text), path
        assert not re.search(r"""(?:import|from)\s*\(?\s*["'](?:https?:)?//""", text), path


def test_the_package_ships_every_dashboard_file():
    """pyproject's package-data globs cover each file, so a wheel (not only an editable install) serves them."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["app.dashboard"]
    files = [p.relative_to(STATIC.parent).as_posix() for p in STATIC.rglob("*") if p.is_file()]
    assert files
    missing = [f for f in files if not any(fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert not missing, missing


def test_the_vendored_chart_library_names_its_version_and_license():
    vendor = STATIC / "vendor" / "uplot"
    banner = (vendor / "uPlot.iife.min.js").read_text()[:200]
    version = re.search(r"\(v([\d.]+)\)", banner).group(1)
    assert f"uPlot {version}" in (vendor / "VERSION").read_text()
    assert "MIT License" in (vendor / "LICENSE").read_text()
