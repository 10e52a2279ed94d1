"""VERP return paths: each message's envelope sender names the message, so a bounce names it too.

`bounces+<id>-<sig>@DRIP_BOUNCE_DOMAIN`: the id is our message row id, the signature a short HMAC of
it, so a forged bounce to the bounce mailbox cannot stop another reader's emails.
"""
from __future__ import annotations

import hashlib
import hmac
import re

PATTERN = re.compile(r"bounces\+(\d{1,18})-([0-9a-f]{12})@", re.IGNORECASE)


def _sig(secret: str, message_pk: int) -> str:
    return hmac.new(secret.encode(), f"verp:{message_pk}".encode(), hashlib.sha256).hexdigest()[:12]


def verp_address(secret: str, message_pk: int, domain: str) -> str:
    return f"bounces+{message_pk}-{_sig(secret, message_pk)}@{domain}"


def parse_verp(secret: str, text: str) -> int | None:
    """The message id in a VERP address found anywhere in `text`, if its signature is ours."""
    for m in PATTERN.finditer(text or ""):
        pk = int(m.group(1))
        if hmac.compare_digest(m.group(2).lower(), _sig(secret, pk)):
            return pk
    return None
