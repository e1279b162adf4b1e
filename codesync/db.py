"""Database engine, sessions and migrations (SQLite by default, PostgreSQL in deployment)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from .settings import Settings, ensure_private_dir, make_private

log = logging.getLogger("codesync.db")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def create_engine(settings: Settings) -> AsyncEngine:
    url = settings.effective_database_url
    if url.startswith("sqlite"):
        ensure_private_dir(settings.data_dir)
        _private_sqlite_file(url)
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - driver hook
            # WAL lets the signaling server and the persistence peer (separate processes)
            # read while the other writes; foreign keys make ON DELETE CASCADE real.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _private_sqlite_file(url: str) -> None:
    """The SQLite file (and its -wal/-shm companions) readable by this user only (0600).

    SQLite creates the database with the process umask (usually 0644) and gives the WAL and
    shared-memory files the database file's mode, so creating the file 0600 up front (and
    tightening an existing one) covers all three.
    """
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    except OSError:
        return  # SQLite will report whatever is wrong with the path
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if candidate.exists():
            make_private(candidate)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


_migrate_lock = asyncio.Lock()


async def migrate(engine: AsyncEngine) -> None:
    """Apply every pending Alembic migration (idempotent; safe to call on each start)."""

    def _upgrade(connection) -> tuple[str | None, str | None]:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        before = MigrationContext.configure(connection).get_current_revision()
        command.upgrade(cfg, "head")
        return before, MigrationContext.configure(connection).get_current_revision()

    async with _migrate_lock:
        async with engine.begin() as conn:
            before, after = await conn.run_sync(_upgrade)
    if before != after:  # alembic's own INFO lines are quiet (codesync.logs)
        log.info("database schema migrated from %s to %s", before or "empty", after)


@asynccontextmanager
async def session_scope(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with factory() as session:
        yield session
