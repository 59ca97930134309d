"""The web dashboard (issue 10): static pages served by the API itself at `/`.

Plain ES modules and one vendored charting library (uPlot, see static/vendor/uplot/VERSION);
no build step and nothing fetched from elsewhere at run time. The pages call the public `/v1`
API with the key the user types once (kept in the browser's sessionStorage)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    @app.get("/ui", include_in_schema=False)
    def dashboard_alias() -> RedirectResponse:
        return RedirectResponse("/")

    app.mount("/ui", StaticFiles(directory=STATIC), name="dashboard")
