"""The SQL tables (kept in step with the Alembic migrations under ``migrations/``)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

#: One row per resource; ``body`` is the resource's JSON document.
resources = sa.Table(
    "pw_resources", metadata,
    sa.Column("kind", sa.String(40), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("project_id", sa.String(64), nullable=False, index=True),
    sa.Column("revision_number", sa.Integer, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("updated_at", sa.String(32), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
)

#: The change feed: (store revision, resource) for every write; old rows may be compacted.
changes = sa.Table(
    "pw_changes", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("revision", sa.Integer, nullable=False, index=True),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("id", sa.String(64), nullable=False),
)

#: A single row: the head revision (also the write lock) and the compaction point.
meta = sa.Table(
    "pw_meta", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("compacted", sa.Integer, nullable=False),
)
