"""A reader's place moves on once a step's email is finished (sent, or given up): the next step is due by
the one schedule rule, and a campaign's last step completes the enrollment and, for a lead magnet,
continues the reader into its shared sequence."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy.orm import Session

from service.campaigns.model import Campaign
from service.campaigns.schedule import step_due
from service.core import events
from service.core.models import Enrollment, Message, Subscriber
from service.enrollment.continuation import continue_enrollment

log = logging.getLogger(__name__)


def advance(session: Session, enrollment: Enrollment, subscriber: Subscriber, campaign: Campaign | None,
            message: Message, now: datetime, campaigns: Mapping[str, Campaign]) -> None:
    """The step after `message`'s becomes the reader's next, due its delay after now (this step's actual
    finish) in the reader's send window; after the last step the enrollment completes."""
    if enrollment.status != "active" or campaign is None:
        return
    # The step's place in the current campaign file, found by key: steps may have moved since it was queued.
    here = campaign.step_by_key(message.step_key)
    enrollment.next_step = here.index + 1 if here is not None else max(enrollment.next_step,
                                                                       message.step_index + 1)
    enrollment.last_sent_at = now
    enrollment.updated_at = now
    nxt = campaign.step(enrollment.next_step)
    enrollment.next_step_key = nxt.key if nxt is not None else None  # `campaigns diff` reads places by key
    if nxt is None:
        enrollment.status = "completed"
        enrollment.next_due_at = enrollment.due_from = None
        events.record(session, type="enrollment_completed", now=now, subscriber_id=subscriber.id,
                      detail=campaign.key)
        continue_into(session, enrollment, subscriber, campaign, now, campaigns)
        return
    enrollment.next_due_at = step_due(campaign, nxt, after=now, reader_timezone=subscriber.timezone)
    enrollment.due_from = now


def continue_into(session: Session, enrollment: Enrollment, subscriber: Subscriber, campaign: Campaign,
                  now: datetime, campaigns: Mapping[str, Campaign]) -> None:
    """A completed lead magnet leads into its shared sequence (see continuation.py)."""
    if continue_enrollment(session, enrollment=enrollment, subscriber=subscriber, campaign=campaign,
                           campaigns=campaigns, now=now) is not None:
        log.info("enrollment %s completed %s; continued into %s", enrollment.id, campaign.key,
                 campaign.continue_into)
