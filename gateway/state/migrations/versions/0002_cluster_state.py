"""Cluster state: leases on series, forwards and deliveries; the retrieval index and the
audit trail in the state database.

A SQLite spool of the previous version kept its retrieval index in ``index.sqlite3``
beside ``spool.sqlite3``: where that file is of the last format (2), its rows (sealed as
they are) are copied into ``retrieval_index`` and the file is left as it was. An older
format cannot be read: the index starts empty and ``gateway reindex`` rebuilds it from
Orthanc (the start logs that).

Revision ID: 0002
Revises: 0001
"""

import logging
import sqlite3
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OLD_INDEX_FORMAT = 2
log = logging.getLogger("gateway.state")


def upgrade() -> None:
    for table in ("instances", "series", "deliveries"):
        op.add_column(table, sa.Column("lease_owner", sa.Text))
        op.add_column(table, sa.Column("lease_expires", sa.Double))
    op.create_index("instances_sop", "instances", ["sop_token"])
    op.create_index("series_state", "series", ["state", "last_received"])
    op.create_table(
        "retrieval_index",
        sa.Column("sop_uid", sa.Text, primary_key=True),
        sa.Column("study_uid", sa.Text, nullable=False),
        sa.Column("series_uid", sa.Text, nullable=False),
        sa.Column("patient_id", sa.Text, nullable=False),
        sa.Column("orthanc_id", sa.Text, nullable=False),
        sa.Column("sop_class", sa.Text, nullable=False),
        sa.Column("transfer_syntax", sa.Text, nullable=False),
        sa.Column("stages", sa.Text, nullable=False),
        sa.Column("kek_id", sa.Text, nullable=False),
        sa.Column("wrapped", sa.LargeBinary, nullable=False),
        sa.Column("nonce", sa.LargeBinary, nullable=False),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
    )
    op.create_index("retrieval_index_study", "retrieval_index", ["study_uid"])
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("node", sa.Text, nullable=False),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("event", sa.Text, nullable=False),
    )
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        _import_old_index(bind)


def _import_old_index(bind: sa.Connection) -> None:
    database = bind.engine.url.database
    old = Path(database).with_name("index.sqlite3") if database else None
    if old is None or not old.exists():
        return
    with sqlite3.connect(old) as source:
        version = source.execute("PRAGMA user_version").fetchone()[0]
        if version != OLD_INDEX_FORMAT:
            log.warning("the retrieval index %s is format %d and cannot be carried over: run 'gateway reindex"
                        " --config ...' to rebuild it from Orthanc", old, version)
            return
        rows = source.execute("SELECT sop_uid, study_uid, series_uid, patient_id, orthanc_id, sop_class,"
                              " transfer_syntax, stages, kek_id, wrapped, nonce, sealed FROM instances").fetchall()
    keys = ("sop_uid", "study_uid", "series_uid", "patient_id", "orthanc_id", "sop_class", "transfer_syntax",
            "stages", "kek_id", "wrapped", "nonce", "sealed")
    table = sa.table("retrieval_index", *(sa.column(k) for k in keys))
    if rows:
        op.bulk_insert(table, [dict(zip(keys, row)) for row in rows])
    log.info("retrieval index: %d entries carried over from %s", len(rows), old.name)
