"""resources, change feed, head revision

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pw_resources",
        sa.Column("kind", sa.String(40), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("revision_number", sa.Integer, nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("updated_at", sa.String(32), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_index("ix_pw_resources_project_id", "pw_resources", ["project_id"])
    op.create_table(
        "pw_changes",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
    )
    op.create_index("ix_pw_changes_revision", "pw_changes", ["revision"])
    meta = op.create_table(
        "pw_meta",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("compacted", sa.Integer, nullable=False),
    )
    op.bulk_insert(meta, [{"id": 1, "revision": 0, "compacted": 0}])


def downgrade() -> None:
    op.drop_table("pw_meta")
    op.drop_table("pw_changes")
    op.drop_table("pw_resources")
