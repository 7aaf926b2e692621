"""The tables of the state database, one place for both SQLite and PostgreSQL.

The migrations in ``migrations/versions`` build exactly these; a test compares them.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    text,
)

metadata = MetaData()

# One row per received object. ``path`` is the file's name in ``incoming/`` (it names the
# node that received it, see ``gateway.spool``); ``lease_owner``/``lease_expires`` claim a
# protected object for one node's upload.
instances = Table(
    "instances", metadata,
    Column("id", Integer, primary_key=True),
    Column("path", Text, nullable=False),
    Column("calling_ae", Text, nullable=False),
    Column("series_token", Text, nullable=False),
    Column("sop_token", Text, nullable=False),
    Column("modality", Text, nullable=False),
    Column("sop_class_uid", Text, nullable=False),
    Column("received_at", Double, nullable=False),
    Column("state", Text, nullable=False, server_default=text("'received'")),
    Column("out_path", Text),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt", Double, nullable=False, server_default=text("0")),
    Column("forwarded_at", Double),
    Column("error", Text),
    Column("size", Integer, nullable=False, server_default=text("0")),
    Column("lease_owner", Text),
    Column("lease_expires", Double),
    Index("instances_state", "state", "series_token"),
    Index("instances_sop", "sop_token"),
)

# One row per series: its state machine (receiving -> protected | quarantined | purged) and
# the lease of the node protecting it.
series = Table(
    "series", metadata,
    Column("series_token", Text, primary_key=True),
    Column("state", Text, nullable=False),
    Column("last_received", Double, nullable=False),
    Column("route", Text),
    Column("reason", Text),
    Column("updated_at", Double, nullable=False),
    Column("forced_route", Text),
    Column("lease_owner", Text),
    Column("lease_expires", Double),
    Index("series_state", "state", "last_received"),  # the claim's scan: series still receiving
)

quarantine_actions = Table(
    "quarantine_actions", metadata,
    Column("action", Text, primary_key=True),
    Column("count", Integer, nullable=False),
)

deliveries = Table(
    "deliveries", metadata,
    Column("id", Integer, primary_key=True),
    Column("instance_id", Integer, nullable=False),
    Column("destination", Text, nullable=False),
    Column("series_token", Text, nullable=False),
    Column("state", Text, nullable=False, server_default=text("'staged'")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt", Double, nullable=False, server_default=text("0")),
    Column("delivered_at", Double),
    Column("error", Text),
    Column("lease_owner", Text),
    Column("lease_expires", Double),
    Index("deliveries_state", "state", "next_attempt"),
)

study_keys = Table(
    "study_keys", metadata,
    Column("study_uid", Text, primary_key=True),
    Column("kek_id", Text, nullable=False),
    Column("wrapped", LargeBinary, nullable=False),
)

# The retrieval index (``gateway.index``): what Orthanc holds, in clear, and the original's
# queryable attributes and digest, sealed.
retrieval_index = Table(
    "retrieval_index", metadata,
    Column("sop_uid", Text, primary_key=True),
    Column("study_uid", Text, nullable=False),
    Column("series_uid", Text, nullable=False),
    Column("patient_id", Text, nullable=False),
    Column("orthanc_id", Text, nullable=False),
    Column("sop_class", Text, nullable=False),
    Column("transfer_syntax", Text, nullable=False),
    Column("stages", Text, nullable=False),
    Column("kek_id", Text, nullable=False),
    Column("wrapped", LargeBinary, nullable=False),
    Column("nonce", LargeBinary, nullable=False),
    Column("sealed", LargeBinary, nullable=False),
    Index("retrieval_index_study", "study_uid"),
)

# The audit trail of every node (``gateway.audit``); each node also keeps its own JSONL file.
audit_events = Table(
    "audit_events", metadata,
    Column("id", Integer, primary_key=True),
    Column("node", Text, nullable=False),
    Column("at", Double, nullable=False),
    Column("event", Text, nullable=False),  # the JSON line as written to the node's file
)
