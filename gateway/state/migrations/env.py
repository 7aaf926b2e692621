"""alembic's environment: migrations run on the connection ``gateway.state.migrate`` passes."""

from alembic import context

from gateway.state.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
