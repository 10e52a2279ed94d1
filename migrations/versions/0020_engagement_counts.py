"""Each step's opened and clicked emails as maintained counts, so the home page with tracking on reads a few
hundred rows instead of counting distinct messages among every open and click event.

- messages.opened_at / clicked_at: when the email was first opened / first clicked. Set once, by the
  statement that records the first such event (`UPDATE ... WHERE opened_at IS NULL`): a second open, or
  two opens racing, find it set and change nothing, so an email counts once however often it is opened.
  Filled here from the events table.
- message_counts.n_opened / n_clicked (and the same columns of count_deltas): of the key's messages, how
  many have opened_at / clicked_at set. The messages' count triggers of 0017_console_counts are replaced
  by ones that also move these; they are filled here from the messages.

Revision ID: 0020_engagement_counts
Revises: 0019_forecast_store
"""
import sqlalchemy as sa
from alembic import op

revision = "0020_engagement_counts"
down_revision = "0019_forecast_store"
branch_labels = None
depends_on = None

# The step counter's per-message amounts beside n (1 per message): (column, condition on the row).
_STEP_SUMS = {"n_sent": "sent_at IS NOT NULL", "n_opened": "opened_at IS NOT NULL",
              "n_clicked": "clicked_at IS NOT NULL"}
_STEP_KEY = ("campaign", "step_key", "step_index", "status")


def _pg_function(name: str, sources: list[tuple[str, int]], sums: dict[str, str]) -> str:
    """The messages' statement trigger: the step counter's and the day counter's changes appended to
    count_deltas, +1 per new row and -1 per old row, summed per key."""
    key = ", ".join(_STEP_KEY)
    step_parts, day_parts = [], []
    for source, sign in sources:
        amounts = ", ".join(f"{sign} * CAST(({cond}) AS INTEGER) AS {col}" for col, cond in sums.items())
        step_parts.append(f"SELECT {key}, {sign} AS n, {amounts} FROM {source}")  # noqa: S608 - fixed names
        day_parts.append(f"SELECT campaign, CAST((sent_at AT TIME ZONE 'UTC') AS DATE) AS day, {sign} AS n "  # noqa: S608
                         f"FROM {source} WHERE sent_at IS NOT NULL")
    cols = ", ".join(sums)
    summed = ", ".join(f"sum({c})" for c in sums)
    nonzero = " OR ".join(f"sum({c}) <> 0" for c in ("n", *sums))
    return (f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n"  # noqa: S608
            f"INSERT INTO count_deltas (counter, {key}, n, {cols}) SELECT 'step', {key}, sum(n), {summed} "
            f"FROM ({' UNION ALL '.join(step_parts)}) AS c GROUP BY {key} HAVING {nonzero};\n"
            f"INSERT INTO count_deltas (counter, campaign, day, n, n_sent) SELECT 'day', campaign, day, sum(n), 0 "
            f"FROM ({' UNION ALL '.join(day_parts)}) AS c GROUP BY campaign, day HAVING sum(n) <> 0;\n"
            "RETURN NULL;\nEND $$")


_PG_OPS = {"ins": ("INSERT", "NEW TABLE AS new_rows", [("new_rows", 1)]),
           "upd": ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows", [("new_rows", 1), ("old_rows", -1)]),
           "del": ("DELETE", "OLD TABLE AS old_rows", [("old_rows", -1)])}


def _pg_triggers(sums: dict[str, str]) -> list[str]:
    out = []
    for op_name, (event, referencing, sources) in _PG_OPS.items():
        fn = f"counts_messages_{op_name}"
        out.append(_pg_function(fn, sources, sums))
        out.append(f"CREATE TRIGGER {fn} AFTER {event} ON messages REFERENCING {referencing} "
                   f"FOR EACH STATEMENT EXECUTE FUNCTION {fn}()")
    return out


def _sqlite_apply(row: str, sign: int, sums: dict[str, str]) -> str:
    key = ", ".join(_STEP_KEY)
    values = ", ".join(f"{row}{c}" for c in _STEP_KEY)
    amounts = ", ".join(f"{sign} * ({row}{cond})" for cond in sums.values())
    update = ", ".join(f"{c} = {c} + excluded.{c}" for c in ("n", *sums))
    # The WHERE is needed anyway: SQLite parses "INSERT ... SELECT ... ON CONFLICT" only with one.
    return (f"INSERT INTO message_counts ({key}, n, {', '.join(sums)}) SELECT {values}, {sign}, {amounts} "  # noqa: S608
            f"WHERE true ON CONFLICT ({key}) DO UPDATE SET {update};\n"
            f"INSERT INTO message_days (campaign, day, n) SELECT {row}campaign, date({row}sent_at), {sign} "
            f"WHERE {row}sent_at IS NOT NULL ON CONFLICT (campaign, day) DO UPDATE SET n = n + excluded.n;")


def _sqlite_triggers(sums: dict[str, str]) -> list[str]:
    watched = (*_STEP_KEY, *(cond.split()[0] for cond in sums.values()))
    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in watched)
    return [
        f"CREATE TRIGGER counts_messages_ins AFTER INSERT ON messages BEGIN\n{_sqlite_apply('NEW.', 1, sums)}\nEND",
        f"CREATE TRIGGER counts_messages_upd AFTER UPDATE OF {', '.join(watched)} ON messages WHEN {changed} BEGIN\n"
        f"{_sqlite_apply('OLD.', -1, sums)}\n{_sqlite_apply('NEW.', 1, sums)}\nEND",
        f"CREATE TRIGGER counts_messages_del AFTER DELETE ON messages BEGIN\n{_sqlite_apply('OLD.', -1, sums)}\nEND",
    ]


def _drop_triggers(dialect: str) -> None:
    for op_name in ("ins", "upd", "del"):
        if dialect == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS counts_messages_{op_name} ON messages")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS counts_messages_{op_name}")


def _create_triggers(dialect: str, sums: dict[str, str]) -> None:
    for statement in (_pg_triggers(sums) if dialect == "postgresql" else _sqlite_triggers(sums)):
        op.execute(statement)


# Each message's first open and first click, from the events (one pass over the tracking events).
_FIRST = """SELECT message_id, min(CASE WHEN type = 'opened' THEN created_at END) AS opened,
       min(CASE WHEN type = 'clicked' THEN created_at END) AS clicked
FROM events WHERE type IN ('opened', 'clicked') AND message_id IS NOT NULL GROUP BY message_id"""

# The step counts from the messages, after the fill: unfolded step changes are folded in by recounting.
_RECOUNT = ["DELETE FROM count_deltas WHERE counter = 'step'", "DELETE FROM message_counts",
            "INSERT INTO message_counts (campaign, step_key, step_index, status, n, n_sent, n_opened, n_clicked) "
            "SELECT campaign, step_key, step_index, status, count(*), count(sent_at), count(opened_at), "
            "count(clicked_at) FROM messages GROUP BY campaign, step_key, step_index, status"]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    # The fill below is one statement over every tracked message: without the triggers it moves no counts
    # (they are recounted after it), and PostgreSQL keeps no transition table of it.
    _drop_triggers(dialect)
    op.add_column("messages", sa.Column("opened_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("messages", sa.Column("clicked_at", sa.DateTime(timezone=True), nullable=True))
    for table in ("message_counts", "count_deltas"):
        op.add_column(table, sa.Column("n_opened", sa.BigInteger(), nullable=False, server_default="0"))
        op.add_column(table, sa.Column("n_clicked", sa.BigInteger(), nullable=False, server_default="0"))
    op.execute(f"UPDATE messages SET opened_at = f.opened, clicked_at = f.clicked FROM ({_FIRST}) AS f "  # noqa: S608
               "WHERE messages.id = f.message_id")
    for statement in _RECOUNT:
        op.execute(statement)
    _create_triggers(dialect, _STEP_SUMS)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    _drop_triggers(dialect)
    op.execute("DELETE FROM count_deltas WHERE counter = 'step' AND n = 0 AND n_sent = 0")
    # Plain DROP COLUMN on both databases (SQLite >= 3.35): a batch rebuild of messages would drop the old
    # table, and with it, by cascade, every stored copy and event of a message.
    for table, columns in (("count_deltas", ("n_clicked", "n_opened")), ("message_counts", ("n_clicked", "n_opened")),
                           ("messages", ("clicked_at", "opened_at"))):
        for column in columns:
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    _create_triggers(dialect, {"n_sent": "sent_at IS NOT NULL"})
