"""Whether sending is paused, shared by every worker through the database.

A provider answering 401/403 means our key is wrong or revoked: every message would fail the same way,
so the dispatcher pauses sending instead of failing them, and an operator resumes it (`drip sending
resume`) once the key is fixed. Every pass reads this state before claiming anything.
"""
from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.orm import Session

from service.core import events
from service.core.models import SendingState

log = logging.getLogger(__name__)
ROW = 1


def paused_reason(session: Session) -> str | None:
    """The reason sending is paused, or None when sending is allowed."""
    state = session.get(SendingState, ROW)
    return (state.reason or "paused") if state is not None and state.paused else None


def pause(session: Session, reason: str, *, now: datetime) -> None:
    state = session.get(SendingState, ROW, with_for_update=True)
    if state is None:
        state = SendingState(id=ROW, paused=False, changed_at=now)
        session.add(state)
    if not state.paused:
        events.record(session, type="sending_paused", now=now, detail=reason)
    state.paused, state.reason, state.changed_at = True, reason, now
    log.error("SENDING PAUSED: %s. Fix the credentials in DRIP_EMAIL_URL, then run `drip sending resume`.", reason)


def resume(session: Session, *, now: datetime) -> bool:
    """Clear the pause; returns whether it was paused."""
    state = session.get(SendingState, ROW, with_for_update=True)
    if state is None or not state.paused:
        return False
    state.paused, state.reason, state.changed_at = False, None, now
    events.record(session, type="sending_resumed", now=now, detail="resumed by an operator")
    log.warning("sending resumed by an operator")
    return True
