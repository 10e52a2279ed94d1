"""How a reader's place in a campaign begins: the one insert every way of joining goes through.

A form signup, a double opt-in confirmation, a finished lead magnet continuing into its shared sequence,
and a switch to a digest each start an enrollment here: active, at `step`, due at `due`, at most one per
reader and campaign (the unique key decides, so two racing starts make one row). The new-address signup
writes the same row in its own plain SQL for speed (service/audience/signups.py: welcome step, due at once).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.campaigns.model import Step
from service.core.models import Enrollment


def start(session: Session, *, subscriber_id: int, campaign: str, step: Step, due: datetime,
          due_from: datetime | None, now: datetime, origin_campaign: str | None = None) -> int | None:
    """Starts the reader on `step` of `campaign`, due at `due`: by the schedule counted from `due_from`, or
    at once (`due_from` None: a welcome the reader just asked for). Returns the new enrollment's id, or None
    when the reader already has an enrollment there (whatever its state: the caller decides about it)."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    return session.execute(
        insert(Enrollment)
        .values(subscriber_id=subscriber_id, campaign=campaign, status="active", next_step=step.index,
                next_step_key=step.key, next_due_at=due, due_from=due_from, origin_campaign=origin_campaign,
                created_at=now, updated_at=now)
        .on_conflict_do_nothing(index_elements=["subscriber_id", "campaign"])
        .returning(Enrollment.id)
    ).scalar()
