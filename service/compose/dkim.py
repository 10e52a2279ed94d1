"""DKIM signing of every outgoing message (RFC 6376, RFC 8463 Ed25519) through dkimpy, with the keys
service/core/dkim_keys.py read at start-up: one signature per key, so a rotation signs with both.

The signed header list (`h=`) always names the List-Unsubscribe pair: RFC 8058 §4 says a receiver offers
one-click only when the signature covers both.
"""
from __future__ import annotations

import dkim

from service.core.dkim_keys import DkimKey

SIGNED_HEADERS = (
    "From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
    "List-Unsubscribe", "List-Unsubscribe-Post", "List-Id", "Feedback-ID", "Reply-To",
)


def sign(raw: bytes, keys: tuple[DkimKey, ...]) -> bytes:
    """`raw` with one DKIM-Signature per key prepended. Each key signs the unsigned message, so each
    signature verifies on its own (DKIM-Signature fields are never in h=)."""
    signatures = b""
    for key in keys:
        signatures += dkim.sign(
            raw, key.selector.encode(), key.domain.encode(), key.private,
            signature_algorithm=key.algorithm.encode(),
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[h.encode() for h in SIGNED_HEADERS],
            linesep=b"\r\n",
        )
    return signatures + raw
