"""Unsubscribe: the reader's one action, honoured at once (RFC 8058 one-click or the page's button)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core import events
from service.core.models import Subscriber
from service.core.tokens import UnsubscribeClaim
from service.enrollment.suppression import stop_subscriber


@dataclass(frozen=True)
class UnsubscribeResult:
    found: bool
    already: bool = False
    cancelled: int = 0


def find_subscriber(session: Session, claim: UnsubscribeClaim) -> Subscriber | None:
    return session.scalar(select(Subscriber).where(Subscriber.public_id == claim.public_id))


def unsubscribe(session: Session, claim: UnsubscribeClaim, *, now: datetime, method: str) -> UnsubscribeResult:
    """Stops every enrollment and cancels queued mail; repeating it changes nothing."""
    subscriber = session.scalar(select(Subscriber).where(Subscriber.public_id == claim.public_id).with_for_update())
    if subscriber is None:
        return UnsubscribeResult(found=False)
    if subscriber.status != "active":
        return UnsubscribeResult(found=True, already=True)
    cancelled = stop_subscriber(session, subscriber, status="unsubscribed", reason="unsubscribed", now=now)
    events.record(session, type="unsubscribed", now=now, subscriber_id=subscriber.id,
                  detail=f"{method} from a {claim.campaign} email", data={"campaign": claim.campaign, "method": method})
    return UnsubscribeResult(found=True, cancelled=cancelled)


MAX_REASON = 300


def record_reason(session: Session, claim: UnsubscribeClaim, reason: str, *, now: datetime) -> bool:
    """The optional line a reader gives after unsubscribing, kept in their history for the operator. Only
    for a reader who has unsubscribed (the unsubscribe itself never waits for it); an empty line records
    nothing. Returns whether it was recorded."""
    # One line of plain text: control characters (a NUL would upset PostgreSQL) become spaces.
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in reason).split())[:MAX_REASON]
    subscriber = find_subscriber(session, claim)
    if not text or subscriber is None or subscriber.status != "unsubscribed":
        return False
    events.record(session, type="unsubscribe_reason", now=now, subscriber_id=subscriber.id, detail=text,
                  data={"campaign": claim.campaign})
    return True
