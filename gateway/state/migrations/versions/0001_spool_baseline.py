"""The spool's schema as the gateway kept it before versioned migrations.

A spool made by that version (no alembic_version table) has these tables already, perhaps
without the two columns that version added at start with ALTER TABLE (series.forced_route,
instances.size): they are added here, nothing else is touched. An empty database gets the
tables.

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
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    have = set(inspector.get_table_names())
    if "instances" not in have:
        op.create_table(
            "instances",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("path", sa.Text, nullable=False),
            sa.Column("calling_ae", sa.Text, nullable=False),
            sa.Column("series_token", sa.Text, nullable=False),
            sa.Column("sop_token", sa.Text, nullable=False),
            sa.Column("modality", sa.Text, nullable=False),
            sa.Column("sop_class_uid", sa.Text, nullable=False),
            sa.Column("received_at", sa.Double, nullable=False),
            sa.Column("state", sa.Text, nullable=False, server_default=sa.text("'received'")),
            sa.Column("out_path", sa.Text),
            sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
            sa.Column("next_attempt", sa.Double, nullable=False, server_default=sa.text("0")),
            sa.Column("forwarded_at", sa.Double),
            sa.Column("error", sa.Text),
            sa.Column("size", sa.Integer, nullable=False, server_default=sa.text("0")),
        )
        op.create_index("instances_state", "instances", ["state", "series_token"])
    elif "size" not in {c["name"] for c in inspector.get_columns("instances")}:
        op.add_column("instances", sa.Column("size", sa.Integer, nullable=False, server_default=sa.text("0")))
    if "series" not in have:
        op.create_table(
            "series",
            sa.Column("series_token", sa.Text, primary_key=True),
            sa.Column("state", sa.Text, nullable=False),
            sa.Column("last_received", sa.Double, nullable=False),
            sa.Column("route", sa.Text),
            sa.Column("reason", sa.Text),
            sa.Column("updated_at", sa.Double, nullable=False),
            sa.Column("forced_route", sa.Text),
        )
    elif "forced_route" not in {c["name"] for c in inspector.get_columns("series")}:
        op.add_column("series", sa.Column("forced_route", sa.Text))
    if "quarantine_actions" not in have:
        op.create_table(
            "quarantine_actions",
            sa.Column("action", sa.Text, primary_key=True),
            sa.Column("count", sa.Integer, nullable=False),
        )
    if "deliveries" not in have:
        op.create_table(
            "deliveries",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("instance_id", sa.Integer, nullable=False),
            sa.Column("destination", sa.Text, nullable=False),
            sa.Column("series_token", sa.Text, nullable=False),
            sa.Column("state", sa.Text, nullable=False, server_default=sa.text("'staged'")),
            sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
            sa.Column("next_attempt", sa.Double, nullable=False, server_default=sa.text("0")),
            sa.Column("delivered_at", sa.Double),
            sa.Column("error", sa.Text),
        )
        op.create_index("deliveries_state", "deliveries", ["state", "next_attempt"])
    if "study_keys" not in have:
        op.create_table(
            "study_keys",
            sa.Column("study_uid", sa.Text, primary_key=True),
            sa.Column("kek_id", sa.Text, nullable=False),
            sa.Column("wrapped", sa.LargeBinary, nullable=False),
        )
