"""Alembic environment: migrations run on the connection portwall hands over."""

from __future__ import annotations

from alembic import context

from portwall.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic upgrade` from the command line with sqlalchemy.url
    from sqlalchemy import create_engine

    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()
