"""One step rendered for a sample reader, as the console and `drip preview` show it; the same email sent as a
test ("[TEST] " subject, `X-Drip-Test: 1`, never recorded: no database row, no stats); and its SpamAssassin
score where SpamAssassin is installed."""
from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from service.campaigns.model import Campaign, Step
from service.compose.composer import ComposeJob, Composer
from service.core.addresses import new_message_id
from service.transports.base import OutboundEmail, Transport

SAMPLE_NAME = "Ada Lovelace"
SAMPLE_EMAIL = "reader@example.org"


def sample_email(composer: Composer, campaign: Campaign, step: Step, *, now: datetime, to: str = SAMPLE_EMAIL,
                 name: str = SAMPLE_NAME, test: bool = False) -> OutboundEmail:
    """The complete email of `step` for a sample reader (its unsubscribe link leads nowhere)."""
    job = ComposeJob(message_pk=0, message_id=new_message_id(composer.from_header(campaign), 0, secrets.token_hex(10)),
                     campaign=campaign, step=step, to_email=to, name=name,
                     unsubscribe_url=f"{composer.base_url}/unsubscribe/test-link-not-valid", now=now, test=test)
    return composer.compose(job)


class TestSendError(RuntimeError):
    """The transport refused or failed the test email; the message says why (never a secret)."""


def send_test(composer: Composer, transport_factory: Callable[[], Transport], campaign: Campaign, step: Step, *,
              to: str, now: datetime) -> OutboundEmail:
    email = sample_email(composer, campaign, step, now=now, to=to, name="", test=True)
    transport = transport_factory()
    try:
        [result] = list(transport.send([email]))
    except Exception as exc:  # the transport's own error names the problem
        raise TestSendError(f"the test was not sent: {exc}") from None
    finally:
        transport.close()
    if not result.ok:
        raise TestSendError(f"the test was refused: {result.error}")
    return email


@dataclass(frozen=True)
class SpamScore:
    score: float
    required: float
    rules: list[tuple[str, str, str]]  # (points, rule, description)


SPAMASSASSIN = "spamassassin"
_STATUS = re.compile(r"score=(-?[\d.]+)\s+required=(-?[\d.]+)")
_RULE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s+(\S+)\s+(.*)$")


def spam_score(raw: bytes, *, timeout: float = 60) -> SpamScore | None:
    """SpamAssassin's verdict on the email, with local tests only (no network look-ups); None when it is
    not installed. Its score is an indication: the mailbox providers' own filters decide."""
    binary = shutil.which(SPAMASSASSIN)
    if binary is None:
        return None
    out = subprocess.run([binary, "-t", "-L"], input=raw, capture_output=True, timeout=timeout).stdout
    text = out.decode("utf-8", "replace")
    status = _STATUS.search(text)
    if status is None:
        return None
    report = text.partition("Content analysis details:")[2]
    rules = [(m.group(1), m.group(2), m.group(3).strip()) for line in report.splitlines()
             if (m := _RULE.match(line)) and not line.strip().startswith("pts")]
    return SpamScore(float(status.group(1)), float(status.group(2)), rules)
