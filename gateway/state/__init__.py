"""The gateway's shared state behind one interface: the spool's rows, series leases, the
retrieval index and the audit table, in SQLite (one node) or PostgreSQL (a cluster).

``schema`` declares the tables (SQLAlchemy Core), ``engine`` opens the database the
configuration names, ``migrate`` applies the versioned schema (alembic, ``migrations/``).
The same statements run on both; where the dialects differ (upserts: ``State.insert``;
row locks: ``FOR UPDATE SKIP LOCKED``, which SQLite's compiler leaves out) the code says so.
"""
