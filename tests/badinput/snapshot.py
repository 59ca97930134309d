"""What "changes nothing" means in the bad-input tests: every row of every table and every file
under the data dir, compared before and after."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import select

from app.core.config import Settings
from app.core.db import session_scope
from app.models import Base


def database_rows(settings: Settings) -> dict[str, list[tuple]]:
    rows = {}
    with session_scope(settings.resolved_database_url) as session:
        for table in Base.metadata.sorted_tables:
            order = list(table.primary_key.columns) or list(table.columns)
            rows[table.name] = [tuple(r) for r in session.execute(select(table).order_by(*order))]
    return rows


def storage_tree(settings: Settings) -> dict[str, str]:
    root = settings.resolved_data_dir
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not _is_database(p)}


def _is_database(path: Path) -> bool:
    return path.suffix in (".sqlite3", ".sqlite3-journal", ".sqlite3-wal")


def snapshot(settings: Settings) -> tuple[dict, dict]:
    return database_rows(settings), storage_tree(settings)
