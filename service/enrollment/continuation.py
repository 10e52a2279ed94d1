"""Continuation: a finished lead-magnet campaign leads into a shared coaching sequence.

A campaign with `continue_into = "back-pain-bundle"` and `continue_at = "week-01"` hands a reader who
completed its last step over to that campaign, starting at that step. The new enrollment is inserted
with ON CONFLICT DO NOTHING on the unique (subscriber, campaign) key: a reader already in the target
(two lead magnets, or a direct signup) keeps the enrollment they have, and the unique (enrollment,
step) message key means no coaching email ever reaches them twice.
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy.orm import Session

from service.campaigns.model import Campaign
from service.campaigns.schedule import step_due
from service.core import events
from service.core.models import Consent, Enrollment, Subscriber
from service.enrollment import start as enrollment_start


def continue_enrollment(session: Session, *, enrollment: Enrollment, subscriber: Subscriber,
                        campaign: Campaign, campaigns: Mapping[str, Campaign], now: datetime) -> int | None:
    """Enrolls the reader who just completed `campaign` into its `continue_into` target; returns the new
    enrollment's id, or None when there is no target or the reader is already enrolled there.

    The first step is due its delay after `now` (the last send), in the target's send window. The
    origin (the campaign the reader actually signed up for) travels along for the footer's "why"."""
    target = campaigns.get(campaign.continue_into) if campaign.continue_into else None
    if target is None or subscriber.status != "active":
        return None
    step = target.step_by_key(campaign.continue_at) if campaign.continue_at else target.steps[0]
    if step is None:  # load_campaigns refuses this; a hot-edited target could still lose the step
        return None
    due = step_due(target, step, after=now, reader_timezone=subscriber.timezone)
    origin = enrollment.origin_campaign or campaign.key
    new_id = enrollment_start.start(session, subscriber_id=subscriber.id, campaign=target.key, step=step, due=due,
                                    due_from=now, now=now, origin_campaign=origin)
    if new_id is None:
        return None
    session.add(Consent(
        subscriber_id=subscriber.id, campaign=target.key, created_at=now, source="continuation",
        wording=continuation_wording(campaigns.get(origin) or campaign),
    ))
    events.record(session, type="continued", now=now, subscriber_id=subscriber.id,
                  detail=f"{campaign.key} completed; continues into {target.key} at {step.key}")
    return new_id


def continuation_wording(origin: Campaign) -> str:
    """The consent text of a continued enrollment: it rests on the consent given on the origin's form."""
    return (f"Continuation of the consent given for {origin.title!r} ({origin.key}), "
            f"which read: {origin.consent}")


def origin_why(enrollment: Enrollment, campaign: Campaign, campaigns: Mapping[str, Campaign]) -> str:
    """The footer's "why" for a message of `enrollment`: the origin campaign's, else its own."""
    origin = campaigns.get(enrollment.origin_campaign) if enrollment.origin_campaign else None
    return origin.why if origin is not None else campaign.why
