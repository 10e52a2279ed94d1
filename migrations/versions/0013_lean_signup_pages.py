"""Two database pages fewer written per signup: a partial unique index on events, and (SQLite) a WITHOUT ROWID
rate_hits.

- `events.provider_event_id`'s unique constraint indexed every event, though only provider webhooks
  set it: a signup's event, and the queued/attempt/sent events of every email, each added a NULL
  entry. It becomes a partial unique index (NOT NULL only): the same uniqueness for the ids there are.
- SQLite: `rate_hits` becomes a WITHOUT ROWID table, so a counter is one b-tree entry (its primary key)
  instead of a row plus an index entry. (PostgreSQL has no such thing; its table is unchanged.)

On SQLite both tables are rebuilt (SQLite cannot drop a constraint): the rows are copied. With a
large event history that takes a while, once.

Revision ID: 0015_lean_signup_pages
Revises: 0014_content_chunks
"""
import sqlalchemy as sa
from alembic import op

revision = "0015_lean_signup_pages"
down_revision = "0014_content_chunks"
branch_labels = None
depends_on = None

_WHERE = sa.text("provider_event_id IS NOT NULL")
_EVENTS = """CREATE TABLE {name} (
    id INTEGER NOT NULL,
    subscriber_id INTEGER,
    message_id INTEGER,
    type VARCHAR(32) NOT NULL,
    detail TEXT,
    data JSON,
    provider_event_id VARCHAR(255),
    created_at DATETIME NOT NULL,
    CONSTRAINT pk_events PRIMARY KEY (id),
    CONSTRAINT fk_events_message_id_messages FOREIGN KEY(message_id) REFERENCES messages (id) ON DELETE CASCADE,
    CONSTRAINT fk_events_subscriber_id_subscribers FOREIGN KEY(subscriber_id) REFERENCES subscribers (id)
        ON DELETE CASCADE{unique}
)"""
_RATE_HITS = """CREATE TABLE {name} (
    "key" VARCHAR(200) NOT NULL,
    window_start DATETIME NOT NULL,
    count INTEGER NOT NULL,
    CONSTRAINT pk_rate_hits PRIMARY KEY ("key", window_start)
){rowid}"""
_EVENT_INDEXES = (
    "CREATE INDEX ix_events_subscriber ON events (subscriber_id, created_at)",
    "CREATE INDEX ix_events_created ON events (created_at)",
    "CREATE INDEX ix_events_message_id ON events (message_id) WHERE message_id IS NOT NULL",
)


def _sqlite_rebuild(*, lean: bool) -> None:
    unique = "" if lean else ",\n    CONSTRAINT uq_events_provider_event_id UNIQUE (provider_event_id)"
    op.execute(_EVENTS.format(name="events_rebuilt", unique=unique))
    op.execute("INSERT INTO events_rebuilt (id, subscriber_id, message_id, type, detail, data, provider_event_id, "
               "created_at) SELECT id, subscriber_id, message_id, type, detail, data, provider_event_id, created_at "
               "FROM events")
    op.execute("DROP TABLE events")
    op.execute("ALTER TABLE events_rebuilt RENAME TO events")
    for statement in _EVENT_INDEXES:
        op.execute(statement)
    if lean:
        op.execute("CREATE UNIQUE INDEX uq_events_provider_event_id ON events (provider_event_id) "
                   "WHERE provider_event_id IS NOT NULL")
    op.execute(_RATE_HITS.format(name="rate_hits_rebuilt", rowid=" WITHOUT ROWID" if lean else ""))
    op.execute('INSERT INTO rate_hits_rebuilt ("key", window_start, count) SELECT "key", window_start, count '
               "FROM rate_hits")
    op.execute("DROP TABLE rate_hits")
    op.execute("ALTER TABLE rate_hits_rebuilt RENAME TO rate_hits")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_rebuild(lean=True)
        return
    op.drop_constraint("uq_events_provider_event_id", "events", type_="unique")
    op.create_index("uq_events_provider_event_id", "events", ["provider_event_id"], unique=True,
                    postgresql_where=_WHERE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_rebuild(lean=False)
        return
    op.drop_index("uq_events_provider_event_id", table_name="events")
    op.create_unique_constraint("uq_events_provider_event_id", "events", ["provider_event_id"])
