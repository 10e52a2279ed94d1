"""Import and export of subscribers. Takes a session and plain values; the CLI lives in
service/commands/subscriber_io.py (`drip import-subscribers`, `drip export-subscribers`).

Import runs every row through the signup path (same validation, same ON CONFLICT keys), so a file
imported twice, or an address already enrolled, never makes a second enrollment. Each new enrollment
gets a consent row with source `import:<file name>` and the campaign's consent wording: the operator
vouches that the people in the file agreed to it. Imports never use double opt-in.
"""
from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.audience.signups import ConsentMeta, SignupError, SignupInput, clean_name, normalize_email, signup
from service.campaigns.model import Campaign
from service.campaigns.schedule import step_due, valid_timezone
from service.core.models import Enrollment, Subscriber
from service.core.spreadsheet import safe_cell

MAX_SOURCE = 100


@dataclass
class ImportReport:
    created: int = 0
    existing: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line number in the file, reason)


def parse_row(row: dict[str, str | None]) -> SignupInput:
    """One CSV row (columns `email`, optional `name`, `timezone`) as signup input; SignupError if bad."""
    email, key = normalize_email((row.get("email") or "").strip())
    tz = (row.get("timezone") or "").strip() or None
    if tz is not None and not valid_timezone(tz):
        raise SignupError("invalid_timezone", f"timezone {tz[:64]!r} is not an IANA name", "timezone")
    return SignupInput(email=email, email_key=key, name=clean_name(row.get("name") or ""), campaign="",
                       timezone=tz)


def import_rows(session: Session, rows: Iterable[tuple[int, dict[str, str | None]]], *, campaign: Campaign,
                source: str, now: datetime, skip_welcome: bool, report: ImportReport,
                seen: dict[str, int]) -> None:
    """Imports (line, row) pairs into `campaign`, adding to `report`; the caller commits. `seen` maps
    address keys to the line they first appeared on, across calls."""
    plain = dataclasses.replace(campaign, double_opt_in=False)
    meta = ConsentMeta(source=f"import:{source}"[:MAX_SOURCE])
    for line, row in rows:
        try:
            data = dataclasses.replace(parse_row(row), campaign=campaign.key)
        except SignupError as exc:
            report.problems.append((line, exc.message))
            continue
        if data.email_key in seen:
            report.problems.append((line, f"duplicate of line {seen[data.email_key]}"))
            continue
        seen[data.email_key] = line
        result = signup(session, data, campaign=plain, meta=meta, now=now, invite_back=False)
        if result.status == "created":
            report.created += 1
            if skip_welcome:
                _skip_welcome(session, result.subscriber_id, campaign, data.timezone, now)
        elif result.status == "existing":
            report.existing += 1
        else:
            report.problems.append((line, "address unsubscribed, bounced or suppressed: not enrolled"))


def _skip_welcome(session: Session, subscriber_id: int, campaign: Campaign, tz: str | None, now: datetime) -> None:
    """Start at the second step, due its delay from now (a one-step campaign completes, and continues
    into its `continue_into` target, on the next pass)."""
    enrollment = session.scalars(select(Enrollment).where(Enrollment.subscriber_id == subscriber_id,
                                                          Enrollment.campaign == campaign.key)).one()
    enrollment.next_step = 1
    step = campaign.step(1)
    if step is not None:
        enrollment.next_step_key = step.key
        enrollment.next_due_at = step_due(campaign, step, after=now, reader_timezone=tz)
        enrollment.due_from = now


EXPORT_COLUMNS = ("email", "name", "timezone", "status", "created_at", "campaigns")


def export_rows(session: Session) -> Iterator[list[str]]:
    """A header row, then one row per subscriber; `campaigns` is `key:status` pairs joined by spaces."""
    yield list(EXPORT_COLUMNS)
    enrollments: dict[int, list[str]] = {}
    for sid, key, status in session.execute(select(Enrollment.subscriber_id, Enrollment.campaign, Enrollment.status)
                                            .order_by(Enrollment.id)):
        enrollments.setdefault(sid, []).append(f"{key}:{status}")
    for s in session.scalars(select(Subscriber).order_by(Subscriber.id)):
        # What a reader typed stays text in a spreadsheet (the console's CSV follows the same rule).
        yield [safe_cell(s.email), safe_cell(s.name), s.timezone or "", s.status, s.created_at.isoformat(),
               " ".join(enrollments.get(s.id, []))]


def read_csv(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, str | None]]]:
    """(line number, row) for each data row; ValueError when there is no `email` column."""
    reader = csv.DictReader(lines)
    if reader.fieldnames is None or "email" not in [f.strip().lower() for f in reader.fieldnames]:
        raise ValueError("the first line must be a header with an 'email' column (optional: name, timezone)")
    for row in reader:
        yield reader.line_num, {(k or "").strip().lower(): v for k, v in row.items()}
