"""Maintained counts: the operator's numbers read from a few small tables instead of millions of rows.

Database triggers (created by migration 0017_console_counts) keep `message_counts`, `message_days`,
`enrollment_counts`, `subscriber_counts` and `signup_counts` in step with their tables: every statement
that inserts, updates or deletes a message, enrollment, subscriber or consent moves the counts in its
own transaction, whatever code wrote it (the dispatcher's set-based writes, a webhook, an erasure's
cascade, an operator's retry). That is the one home of "a message's status and its count": no caller
can change one without the other, and a rolled-back transaction takes its count changes with it.

- SQLite (one writer at a time): row triggers add and subtract in the count tables directly.
- PostgreSQL: statement triggers append what the statement changed to `count_deltas` (summed per key),
  and `fold` moves those rows into the count tables now and then. Appending never waits for another
  transaction; updating a hot count row in place would queue every worker and webhook behind each
  other's commit and could deadlock two that take count rows in different orders.

Readers add the unfolded rows to the count tables in one statement, so what they see is exact at any
moment. `rebuild` recounts everything from the tables themselves (`drip stats --rebuild`).
"""
from __future__ import annotations

from collections.abc import Iterable
from datetime import date

from sqlalchemy import delete, func, literal, literal_column, select, text, union_all
from sqlalchemy.orm import Session

from service.core.models import (
    CountDelta,
    EnrollmentCount,
    MessageCount,
    MessageDay,
    SignupCount,
    SubscriberCount,
)

# One fold at a time (PostgreSQL advisory lock key): two folds adding to the same count rows in
# different orders could deadlock, and a second one has nothing left to do anyway.
_FOLD_LOCK = 0x647269705F63  # "drip_c"

_FOLD_PG = text("""
WITH moved AS (DELETE FROM count_deltas
    RETURNING counter, campaign, step_key, step_index, status, day, n, n_sent, n_opened, n_clicked),
step AS (
    INSERT INTO message_counts (campaign, step_key, step_index, status, n, n_sent, n_opened, n_clicked)
    SELECT campaign, step_key, step_index, status, sum(n), sum(n_sent), sum(n_opened), sum(n_clicked)
    FROM moved WHERE counter = 'step' GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (campaign, step_key, step_index, status)
    DO UPDATE SET n = message_counts.n + excluded.n, n_sent = message_counts.n_sent + excluded.n_sent,
        n_opened = message_counts.n_opened + excluded.n_opened,
        n_clicked = message_counts.n_clicked + excluded.n_clicked),
day AS (
    INSERT INTO message_days (campaign, day, n)
    SELECT campaign, day, sum(n) FROM moved WHERE counter = 'day' GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (campaign, day) DO UPDATE SET n = message_days.n + excluded.n),
enr AS (
    INSERT INTO enrollment_counts (campaign, status, n)
    SELECT campaign, status, sum(n) FROM moved WHERE counter = 'enrollment' GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (campaign, status) DO UPDATE SET n = enrollment_counts.n + excluded.n),
sub AS (
    INSERT INTO subscriber_counts (status, n)
    SELECT status, sum(n) FROM moved WHERE counter = 'subscriber' GROUP BY 1 ORDER BY 1
    ON CONFLICT (status) DO UPDATE SET n = subscriber_counts.n + excluded.n),
sig AS (
    INSERT INTO signup_counts (campaign, n)
    SELECT campaign, sum(n) FROM moved WHERE counter = 'signup' GROUP BY 1 ORDER BY 1
    ON CONFLICT (campaign) DO UPDATE SET n = signup_counts.n + excluded.n)
SELECT count(*) FROM moved""")


def fold(session: Session) -> int:
    """PostgreSQL: move the appended changes into the count tables (one fold at a time; a second caller
    returns 0 at once). Returns how many change rows were folded. Nothing to do on SQLite. The caller
    commits."""
    if session.get_bind().dialect.name != "postgresql":
        return 0
    if not session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _FOLD_LOCK}):
        return 0
    return int(session.scalar(_FOLD_PG) or 0)


def _day_of(session: Session, column: str) -> str:
    if session.get_bind().dialect.name == "postgresql":
        return f"CAST(({column} AT TIME ZONE 'UTC') AS DATE)"
    return f"date({column})"


def rebuild(session: Session) -> None:
    """Recount everything from the tables (after a restore, or to prove the counts right). On PostgreSQL
    the counted tables are locked against writes meanwhile (reads go on), so no change is lost or counted
    twice. The caller commits."""
    pg = session.get_bind().dialect.name == "postgresql"
    if pg:
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _FOLD_LOCK})  # no fold meanwhile
        session.execute(text("LOCK TABLE messages, enrollments, subscribers, consents IN SHARE MODE"))
    for model in (CountDelta, MessageCount, MessageDay, EnrollmentCount, SubscriberCount, SignupCount):
        session.execute(delete(model))
    session.execute(text(
        "INSERT INTO message_counts (campaign, step_key, step_index, status, n, n_sent, n_opened, n_clicked) "
        "SELECT campaign, step_key, step_index, status, count(*), count(sent_at), count(opened_at), "
        "count(clicked_at) FROM messages GROUP BY campaign, step_key, step_index, status"))
    day = _day_of(session, "sent_at")
    session.execute(text(
        f"INSERT INTO message_days (campaign, day, n) SELECT campaign, {day}, count(*) FROM messages "  # noqa: S608
        f"WHERE sent_at IS NOT NULL GROUP BY campaign, {day}"))  # (our own expression, no input)
    session.execute(text("INSERT INTO enrollment_counts (campaign, status, n) "
                         "SELECT campaign, status, count(*) FROM enrollments GROUP BY campaign, status"))
    session.execute(text("INSERT INTO subscriber_counts (status, n) "
                         "SELECT status, count(*) FROM subscribers GROUP BY status"))
    session.execute(text("INSERT INTO signup_counts (campaign, n) SELECT campaign, count(*) FROM consents "
                         "GROUP BY campaign"))
    session.execute(text("UPDATE enrollments SET unsubscribed_after_step = NULL "
                         "WHERE unsubscribed_after_step IS NOT NULL"))
    session.execute(text(_UNSUBSCRIBED_AFTER))


# Each unsubscribed reader's enrollments: the last step sent by the time they unsubscribed (what
# suppression.stop_subscriber records at that moment). A reader who left is one with an unsubscribe time,
# whatever their status now: one who unsubscribed and whose last email bounced afterwards is "bounced" but
# still left after that step (a resubscribe clears the time, and the figure with it).
_UNSUBSCRIBED_AFTER = """UPDATE enrollments SET unsubscribed_after_step = (
    SELECT max(m.step_index) FROM messages m JOIN subscribers s ON s.id = m.subscriber_id
    WHERE m.enrollment_id = enrollments.id AND m.sent_at IS NOT NULL AND m.sent_at <= s.unsubscribed_at)
WHERE subscriber_id IN (SELECT id FROM subscribers WHERE unsubscribed_at IS NOT NULL)"""


# -- readers: the count table plus the changes not folded yet, summed in one statement -------------------
def step_counts(session: Session, campaigns: Iterable[str] | None = None) -> list[tuple[str, str, int, str, int, int]]:
    """(campaign, step_key, step_index, status, n, n_sent) for every non-empty key; all campaigns if None."""
    t, d = MessageCount, CountDelta
    folded = select(t.campaign, t.step_key, t.step_index, t.status, t.n, t.n_sent)
    fresh = select(d.campaign, d.step_key, d.step_index, d.status, d.n, d.n_sent).where(d.counter == "step")
    if campaigns is not None:
        keys = list(campaigns)
        folded, fresh = folded.where(t.campaign.in_(keys)), fresh.where(d.campaign.in_(keys))
    u = union_all(folded, fresh).subquery()
    rows = session.execute(
        select(u.c.campaign, u.c.step_key, u.c.step_index, u.c.status, func.sum(u.c.n), func.sum(u.c.n_sent))
        .group_by(u.c.campaign, u.c.step_key, u.c.step_index, u.c.status)).all()
    return [(c, k, int(i), s, int(n), int(ns)) for c, k, i, s, n, ns in rows if n or ns]


def sent_days(session: Session, campaign: str | None, first: date) -> dict[date, int]:
    """Messages handed over per UTC day from `first` on, for one campaign or (None) all of them."""
    t, d = MessageDay, CountDelta
    folded = select(t.day, t.n).where(t.day >= first)
    fresh = select(d.day, d.n).where(d.counter == "day", d.day >= first)
    if campaign is not None:
        folded, fresh = folded.where(t.campaign == campaign), fresh.where(d.campaign == campaign)
    u = union_all(folded, fresh).subquery()
    out: dict[date, int] = {}
    for day, n in session.execute(select(u.c.day, func.sum(u.c.n)).group_by(u.c.day)).all():
        if n:
            out[day if isinstance(day, date) else date.fromisoformat(str(day))] = int(n)
    return out


def engaged_counts(session: Session, campaign: str | None = None) -> dict[tuple[str, str, int], tuple[int, int]]:
    """{(campaign, step_key, step_index): (opened, clicked)}: how many of each step's emails were opened /
    clicked at least once (tracking), for one campaign or (None) all."""
    t, d = MessageCount, CountDelta
    folded = select(t.campaign, t.step_key, t.step_index, t.n_opened, t.n_clicked)
    fresh = select(d.campaign, d.step_key, d.step_index, d.n_opened, d.n_clicked).where(d.counter == "step")
    if campaign is not None:
        folded, fresh = folded.where(t.campaign == campaign), fresh.where(d.campaign == campaign)
    u = union_all(folded, fresh).subquery()
    rows = session.execute(select(u.c.campaign, u.c.step_key, u.c.step_index, func.sum(u.c.n_opened),
                                  func.sum(u.c.n_clicked)).group_by(u.c.campaign, u.c.step_key, u.c.step_index))
    return {(c, k, int(i)): (int(o), int(cl)) for c, k, i, o, cl in rows}


def enrollment_counts(session: Session) -> dict[str, dict[str, int]]:
    """{campaign: {status: n}}."""
    t, d = EnrollmentCount, CountDelta
    u = union_all(select(t.campaign, t.status, t.n),
                  select(d.campaign, d.status, d.n).where(d.counter == "enrollment")).subquery()
    out: dict[str, dict[str, int]] = {}
    for campaign, status, n in session.execute(
            select(u.c.campaign, u.c.status, func.sum(u.c.n)).group_by(u.c.campaign, u.c.status)).all():
        if n:
            out.setdefault(campaign, {})[status] = int(n)
    return out


def subscriber_counts(session: Session) -> dict[str, int]:
    t, d = SubscriberCount, CountDelta
    u = union_all(select(t.status, t.n), select(d.status, d.n).where(d.counter == "subscriber")).subquery()
    return {s: int(n) for s, n in session.execute(select(u.c.status, func.sum(u.c.n)).group_by(u.c.status)) if n}


def signup_counts(session: Session) -> dict[str, int]:
    t, d = SignupCount, CountDelta
    u = union_all(select(t.campaign, t.n), select(d.campaign, d.n).where(d.counter == "signup")).subquery()
    return {c: int(n) for c, n in session.execute(select(u.c.campaign, func.sum(u.c.n)).group_by(u.c.campaign))
            if n}


def totals(session: Session) -> dict[str, dict[str, int]]:
    """/metrics' totals in one statement: {"messages": {status: n}, "subscribers": {status: n},
    "signups": {campaign: n}}."""
    parts = {
        "messages": (select(MessageCount.status.label("k"), MessageCount.n),
                     select(CountDelta.status.label("k"), CountDelta.n).where(CountDelta.counter == "step")),
        "subscribers": (select(SubscriberCount.status.label("k"), SubscriberCount.n),
                        select(CountDelta.status.label("k"), CountDelta.n).where(CountDelta.counter == "subscriber")),
        "signups": (select(SignupCount.campaign.label("k"), SignupCount.n),
                    select(CountDelta.campaign.label("k"), CountDelta.n).where(CountDelta.counter == "signup")),
    }
    grouped = []
    for name, (folded, fresh) in parts.items():
        u = union_all(folded, fresh).subquery()
        grouped.append(select(literal(name).label("what"), u.c.k, func.sum(u.c.n).label("n")).group_by(u.c.k))
    out: dict[str, dict[str, int]] = {name: {} for name in parts}
    for what, key, n in session.execute(union_all(*grouped)):
        if n:
            out[what][key] = int(n)
    return out


def message_status_counts(session: Session) -> dict[str, int]:
    """Messages per status over every campaign."""
    out: dict[str, int] = {}
    for _c, _k, _i, status, n, _ns in step_counts(session):
        out[status] = out.get(status, 0) + n
    return out


def recount(session: Session) -> dict[str, object]:
    """Every count recomputed from the tables, in the shape `current` returns: for tests and `drip stats
    --check`."""
    day = text(_day_of(session, "sent_at"))
    steps = {(c, k, i, s): (n, ns) for c, k, i, s, n, ns in session.execute(text(
        "SELECT campaign, step_key, step_index, status, count(*), count(sent_at) FROM messages "
        "GROUP BY campaign, step_key, step_index, status"))}
    # Opened and clicked emails per step, from the messages' first-open and first-click times (the events
    # themselves may have been pruned since: an email opened a year ago still counts as opened).
    engaged = {(c, k, i): (o, cl) for c, k, i, o, cl in session.execute(text(
        "SELECT campaign, step_key, step_index, count(opened_at), count(clicked_at) FROM messages "
        "WHERE opened_at IS NOT NULL OR clicked_at IS NOT NULL GROUP BY campaign, step_key, step_index"))}
    days = {(c, d if isinstance(d, date) else date.fromisoformat(str(d))): n for c, d, n in session.execute(
        select(literal_column("campaign"), day, func.count()).select_from(text("messages"))
        .where(text("sent_at IS NOT NULL")).group_by(literal_column("campaign"), day))}
    return {
        "steps": steps, "days": days, "engaged": engaged,
        "enrollments": {(c, s): n for c, s, n in session.execute(text(
            "SELECT campaign, status, count(*) FROM enrollments GROUP BY campaign, status"))},
        "subscribers": dict(session.execute(text("SELECT status, count(*) FROM subscribers GROUP BY status")).all()),
        "signups": dict(session.execute(text("SELECT campaign, count(*) FROM consents GROUP BY campaign")).all()),
        "unsubscribed_after": {(c, i): n for c, i, n in session.execute(text(
            "SELECT campaign, idx, count(*) FROM (SELECT m.campaign, m.subscriber_id, max(m.step_index) AS idx "
            "FROM messages m JOIN subscribers s ON s.id = m.subscriber_id WHERE s.unsubscribed_at IS NOT NULL "
            "AND m.sent_at IS NOT NULL AND m.sent_at <= s.unsubscribed_at GROUP BY m.campaign, m.subscriber_id) "
            "AS last GROUP BY campaign, idx"))},
    }


def current(session: Session) -> dict[str, object]:
    """Every maintained count, in the shape of `recount`."""
    days: dict[tuple[str, date], int] = {}
    t, d = MessageDay, CountDelta
    u = union_all(select(t.campaign, t.day, t.n),
                  select(d.campaign, d.day, d.n).where(d.counter == "day")).subquery()
    for c, day, n in session.execute(select(u.c.campaign, u.c.day, func.sum(u.c.n)).group_by(u.c.campaign, u.c.day)):
        if n:
            days[(c, day if isinstance(day, date) else date.fromisoformat(str(day)))] = int(n)
    return {
        "steps": {(c, k, i, s): (n, ns) for c, k, i, s, n, ns in step_counts(session)},
        "days": days,
        "engaged": {(c, k, i): (o, cl) for (c, k, i), (o, cl) in engaged_counts(session).items() if o or cl},
        "enrollments": {(c, s): n for c, by in enrollment_counts(session).items() for s, n in by.items()},
        "subscribers": subscriber_counts(session),
        "signups": signup_counts(session),
        "unsubscribed_after": {(c, i): n for c, i, n in session.execute(text(
            "SELECT campaign, unsubscribed_after_step, count(*) FROM enrollments "
            "WHERE unsubscribed_after_step IS NOT NULL GROUP BY campaign, unsubscribed_after_step"))},
    }


def mismatches(session: Session) -> list[str]:
    """What differs between the maintained counts and a recount, one line each (empty: all exact).

    "unsubscribed_after" is the one figure recorded at a moment rather than kept by a trigger: the step a
    reader had last been sent when they unsubscribed. The recount derives it from the send times, so it
    would differ only for an email whose outcome was written after the unsubscribe but stamped before it
    (two machines' clocks apart): that email was still in flight when the reader left."""
    have, want = current(session), recount(session)
    lines = []
    for name in want:
        a, b = have[name], want[name]
        for key in sorted(set(a) | set(b), key=repr):
            if a.get(key) != b.get(key):
                lines.append(f"{name} {key}: maintained {a.get(key)}, recounted {b.get(key)}")
    return lines
