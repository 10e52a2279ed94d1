"""Maintained counts for the operator's console, and the indexes its filters need.

- Count tables (message_counts, message_days, enrollment_counts, subscriber_counts, signup_counts) kept by
  triggers on messages, enrollments, subscribers and consents, so campaign health, the charts and /metrics
  read a few hundred rows instead of counting the whole message log. SQLite: row triggers update the
  counts directly (one writer at a time). PostgreSQL: statement triggers append each statement's summed
  changes to count_deltas, which service/core/counts.py folds into the count tables (appending never
  waits on another transaction, so racing workers and webhooks neither queue on a hot row nor deadlock).
  The tables are filled from the existing rows here.
- messages (campaign, step_key, id): the send log and its CSV export filtered by campaign and step.
- consents (created_at): "signups in the last 24 hours" for /metrics.
- enrollments.unsubscribed_after_step (set when a reader unsubscribes, filled here from the history) with
  a partial index: the campaign page's "unsubscribed after this step" without reading the messages of
  every reader who left.
- campaign_states.steps_digest: the step keys a worker last checked for readers to reactivate, so a
  worker's start does that check only for a campaign whose steps changed.
- PostgreSQL: subscribers (email_key text_pattern_ops), so an address prefix is an index range whatever
  the database's collation (the unique index serves `=` only under a non-C collation). On SQLite the
  same name is an index that never holds an entry: there the unique index already serves the range.

Revision ID: 0017_console_counts
Revises: 0016_enrollment_due_from
"""
import sqlalchemy as sa
from alembic import op

revision = "0017_console_counts"
down_revision = "0017_operator_tz_disabled"
branch_labels = None
depends_on = None

_SENT = "(sent_at IS NOT NULL)"
# table -> the counts it moves: (counter, {delta column: expression over a row}, row filter, n_sent).
# In SQLite trigger bodies a row is NEW./OLD.; in PostgreSQL's the transition tables' columns.
COUNTERS = {
    "messages": [
        ("step", {"campaign": "campaign", "step_key": "step_key", "step_index": "step_index", "status": "status"},
         None, _SENT),
        ("day", {"campaign": "campaign", "day": "@day"}, "sent_at IS NOT NULL", None),
    ],
    "enrollments": [("enrollment", {"campaign": "campaign", "status": "status"}, None, None)],
    "subscribers": [("subscriber", {"status": "status"}, None, None)],
    "consents": [("signup", {"campaign": "campaign"}, None, None)],
}
# counter -> (count table, its key columns, whether it has n_sent)
TARGETS = {
    "step": ("message_counts", ("campaign", "step_key", "step_index", "status"), True),
    "day": ("message_days", ("campaign", "day"), False),
    "enrollment": ("enrollment_counts", ("campaign", "status"), False),
    "subscriber": ("subscriber_counts", ("status",), False),
    "signup": ("signup_counts", ("campaign",), False),
}
# The columns whose change moves a count (SQLite's UPDATE triggers fire only for these).
WATCHED = {"messages": ("campaign", "step_key", "step_index", "status", "sent_at"),
           "enrollments": ("campaign", "status"), "subscribers": ("status",), "consents": ("campaign",)}


def _expr(expr: str, row: str, dialect: str) -> str:
    if expr == "@day":
        return f"date({row}sent_at)" if dialect == "sqlite" else f"CAST(({row}sent_at AT TIME ZONE 'UTC') AS DATE)"
    if expr == _SENT:
        return f"({row}sent_at IS NOT NULL)"
    return f"{row}{expr}"


def _pg_body(table: str, sources: list[tuple[str, int]]) -> str:
    """One INSERT into count_deltas per counter: +1 per new row, -1 per old row, summed per key."""
    statements = []
    for counter, cols, where, sent in COUNTERS[table]:
        names = list(cols)
        parts = []
        for source, sign in sources:
            exprs = [f"{_expr(cols[c], '', 'postgresql')} AS {c}" for c in names]
            n_sent = f"{sign} * CAST({_expr(sent, '', 'postgresql')} AS INTEGER)" if sent else "0"
            parts.append(f"SELECT {', '.join(exprs)}, {sign} AS n, {n_sent} AS n_sent FROM {source}"  # noqa: S608
                         + (f" WHERE {where}" if where else ""))
        key = ", ".join(names)
        statements.append(
            f"INSERT INTO count_deltas (counter, {key}, n, n_sent) "  # noqa: S608 - fixed names, no input
            f"SELECT '{counter}', {key}, sum(n), sum(n_sent) FROM ({' UNION ALL '.join(parts)}) AS c "
            f"GROUP BY {key} HAVING sum(n) <> 0 OR sum(n_sent) <> 0;")
    return "\n".join(statements)


_PG_OPS = {"ins": ("INSERT", "NEW TABLE AS new_rows", [("new_rows", 1)]),
           "upd": ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows", [("new_rows", 1), ("old_rows", -1)]),
           "del": ("DELETE", "OLD TABLE AS old_rows", [("old_rows", -1)])}


def _sqlite_apply(counter: str, cols: dict, where: str | None, sent: str | None, row: str, sign: int) -> str:
    table, key, has_sent = TARGETS[counter]
    values = [_expr(cols[c], row, "sqlite") for c in key]
    n_sent = f"{sign} * ({_expr(sent, row, 'sqlite')})" if sent else "0"
    insert_cols = ", ".join(key) + ", n" + (", n_sent" if has_sent else "")
    select_vals = ", ".join(values) + f", {sign}" + (f", {n_sent}" if has_sent else "")
    update = "n = n + excluded.n" + (", n_sent = n_sent + excluded.n_sent" if has_sent else "")
    # The WHERE is needed anyway: SQLite parses "INSERT ... SELECT ... ON CONFLICT" only with one.
    return (f"INSERT INTO {table} ({insert_cols}) SELECT {select_vals} WHERE {where and row + where or 'true'} "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {update};")


def _sqlite_triggers(table: str) -> list[str]:
    def body(rows: list[tuple[str, int]]) -> str:
        return "\n".join(_sqlite_apply(counter, cols, where, sent, row, sign)
                         for row, sign in rows for counter, cols, where, sent in COUNTERS[table])
    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in WATCHED[table])
    return [
        f"CREATE TRIGGER counts_{table}_ins AFTER INSERT ON {table} BEGIN\n{body([('NEW.', 1)])}\nEND",
        f"CREATE TRIGGER counts_{table}_upd AFTER UPDATE OF {', '.join(WATCHED[table])} ON {table} "
        f"WHEN {changed} BEGIN\n{body([('OLD.', -1), ('NEW.', 1)])}\nEND",
        f"CREATE TRIGGER counts_{table}_del AFTER DELETE ON {table} BEGIN\n{body([('OLD.', -1)])}\nEND",
    ]


def _pg_triggers(table: str) -> list[str]:
    out = []
    for op_name, (event, referencing, sources) in _PG_OPS.items():
        fn = f"counts_{table}_{op_name}"
        out.append(f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n"
                   f"{_pg_body(table, sources)}\nRETURN NULL;\nEND $$")
        out.append(f"CREATE TRIGGER {fn} AFTER {event} ON {table} REFERENCING {referencing} "
                   f"FOR EACH STATEMENT EXECUTE FUNCTION {fn}()")
    return out


# Each unsubscribed reader's enrollments: the last step sent by the time they unsubscribed.
UNSUBSCRIBED_AFTER = """UPDATE enrollments SET unsubscribed_after_step = (
    SELECT max(m.step_index) FROM messages m JOIN subscribers s ON s.id = m.subscriber_id
    WHERE m.enrollment_id = enrollments.id AND m.sent_at IS NOT NULL AND m.sent_at <= s.unsubscribed_at)
WHERE subscriber_id IN (SELECT id FROM subscribers WHERE status = 'unsubscribed')"""


def _fill(dialect: str) -> list[str]:
    day = "date(sent_at)" if dialect == "sqlite" else "CAST((sent_at AT TIME ZONE 'UTC') AS DATE)"
    return [
        "INSERT INTO message_counts (campaign, step_key, step_index, status, n, n_sent) "
        "SELECT campaign, step_key, step_index, status, count(*), count(sent_at) FROM messages "
        "GROUP BY campaign, step_key, step_index, status",
        f"INSERT INTO message_days (campaign, day, n) SELECT campaign, {day}, count(*) FROM messages "  # noqa: S608
        f"WHERE sent_at IS NOT NULL GROUP BY campaign, {day}",
        "INSERT INTO enrollment_counts (campaign, status, n) SELECT campaign, status, count(*) FROM enrollments "
        "GROUP BY campaign, status",
        "INSERT INTO subscriber_counts (status, n) SELECT status, count(*) FROM subscribers GROUP BY status",
        "INSERT INTO signup_counts (campaign, n) SELECT campaign, count(*) FROM consents GROUP BY campaign",
    ]


def upgrade() -> None:
    big = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "message_counts",
        sa.Column("campaign", sa.String(64), nullable=False), sa.Column("step_key", sa.String(64), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False), sa.Column("status", sa.String(16), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False), sa.Column("n_sent", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("campaign", "step_key", "step_index", "status", name="pk_message_counts"))
    op.create_table(
        "message_days",
        sa.Column("campaign", sa.String(64), nullable=False), sa.Column("day", sa.Date(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("campaign", "day", name="pk_message_days"))
    op.create_table(
        "enrollment_counts",
        sa.Column("campaign", sa.String(64), nullable=False), sa.Column("status", sa.String(16), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("campaign", "status", name="pk_enrollment_counts"))
    op.create_table(
        "subscriber_counts",
        sa.Column("status", sa.String(16), nullable=False), sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("status", name="pk_subscriber_counts"))
    op.create_table(
        "signup_counts",
        sa.Column("campaign", sa.String(64), nullable=False), sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("campaign", name="pk_signup_counts"))
    op.create_table(
        "count_deltas",
        sa.Column("id", big, nullable=False), sa.Column("counter", sa.String(16), nullable=False),
        sa.Column("campaign", sa.String(64), nullable=False, server_default=""),
        sa.Column("step_key", sa.String(64), nullable=False, server_default=""),
        sa.Column("step_index", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("status", sa.String(16), nullable=False, server_default=""),
        sa.Column("day", sa.Date(), nullable=True),
        sa.Column("n", sa.BigInteger(), nullable=False), sa.Column("n_sent", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_count_deltas"))
    # Plain ADD COLUMN (no batch rebuild) on both databases.
    op.add_column("campaign_states", sa.Column("steps_digest", sa.String(64), nullable=True))
    op.add_column("enrollments", sa.Column("unsubscribed_after_step", sa.Integer(), nullable=True))
    op.execute(UNSUBSCRIBED_AFTER)
    op.create_index("ix_enrollments_unsubscribed_after", "enrollments", ["campaign", "unsubscribed_after_step"],
                    postgresql_where=sa.text("unsubscribed_after_step IS NOT NULL"),
                    sqlite_where=sa.text("unsubscribed_after_step IS NOT NULL"))
    op.create_index("ix_messages_campaign_step", "messages", ["campaign", "step_key", "id"])
    op.create_index("ix_consents_created_at", "consents", ["created_at"])
    dialect = op.get_bind().dialect.name
    # SQLite: a partial index that never holds an entry (email_key is never NULL); see the model.
    op.create_index("ix_subscribers_email_key_pattern", "subscribers", ["email_key"],
                    postgresql_ops={"email_key": "text_pattern_ops"}, sqlite_where=sa.text("email_key IS NULL"))
    for statement in _fill(dialect):
        op.execute(statement)
    for table in COUNTERS:
        for statement in (_pg_triggers(table) if dialect == "postgresql" else _sqlite_triggers(table)):
            op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table in COUNTERS:
        for op_name in ("ins", "upd", "del"):
            if dialect == "postgresql":
                op.execute(f"DROP TRIGGER IF EXISTS counts_{table}_{op_name} ON {table}")
                op.execute(f"DROP FUNCTION IF EXISTS counts_{table}_{op_name}()")
            else:
                op.execute(f"DROP TRIGGER IF EXISTS counts_{table}_{op_name}")
    op.drop_index("ix_subscribers_email_key_pattern", table_name="subscribers")
    op.drop_index("ix_consents_created_at", table_name="consents")
    op.drop_index("ix_messages_campaign_step", table_name="messages")
    op.execute("ALTER TABLE campaign_states DROP COLUMN steps_digest")
    op.drop_index("ix_enrollments_unsubscribed_after", table_name="enrollments")
    op.execute("ALTER TABLE enrollments DROP COLUMN unsubscribed_after_step")
    for table in ("count_deltas", "signup_counts", "subscriber_counts", "enrollment_counts", "message_days",
                  "message_counts"):
        op.drop_table(table)
