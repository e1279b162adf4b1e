"""Alembic environment: runs on the connection handed over by ``codesync.db.migrate``."""

from alembic import context
from sqlmodel import SQLModel

from codesync import models  # noqa: F401  (registers the tables)

target_metadata = SQLModel.metadata
connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only `alembic` CLI use
    raise RuntimeError("run migrations through codesync.db.migrate()")

context.configure(
    connection=connection,
    target_metadata=target_metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
