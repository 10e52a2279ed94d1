"""The one rule for what an SMTP or DSN status says about a reader's mailbox.

The same status has the same effect whether the relay answers it at once (the SMTP transport) or a
bounce email reports it later (a DSN read by `drip bounces`):

- `MAILBOX`: permanent and about the mailbox: RFC 3463 5.1.x (addressing) or 5.2.x (mailbox), except
  5.2.3 (the message is too big, not the mailbox's fault), and 5.4.4 (the address's domain does not
  route: no such domain, as relays report in bounce emails); or, without an enhanced code, a bare 550,
  551 or 553 answered at RCPT that does not mention relaying. The address is suppressed for good.
- `REFUSED`: permanent, but about this email or about us (5.3.4 too big, 5.6.x content, 5.7.x policy,
  "relay not permitted"): the email fails and the reader stays subscribed.
- `TRANSIENT`: 4xx or 4.x.x: worth trying again later.
"""
from __future__ import annotations

import re
from enum import Enum

ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


class Verdict(Enum):
    OK = "ok"
    TRANSIENT = "transient"
    REFUSED = "refused"
    MAILBOX = "mailbox"


def classify(code: int | None, text: str | bytes = "", *, stage: str = "DATA") -> Verdict:
    """The verdict on a reply `code` (None when only an enhanced status is known, as in a DSN's Status
    field) with its `text`, given at `stage` ("RCPT", "DATA", ...)."""
    words = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    enhanced = ENHANCED.search(words)
    # The basic reply code decides the class when there is one; a DSN's Status field has only the enhanced one.
    klass = code // 100 if code else (int(enhanced.group(1)) if enhanced else None)
    if klass == 2:
        return Verdict.OK
    if klass != 5:
        return Verdict.TRANSIENT  # 4xx, or nothing we can read: never blame the reader's mailbox for it
    if enhanced:
        subject, detail = enhanced.group(2), enhanced.group(3)
        about_mailbox = subject == "1" or (subject == "2" and detail != "3") or (subject, detail) == ("4", "4")
    else:
        about_mailbox = stage == "RCPT" and code in (550, 551, 553) and "relay" not in words.lower()
    return Verdict.MAILBOX if about_mailbox else Verdict.REFUSED
