"""Addresses as they go on the wire: IDN domains in Punycode, and the Message-ID a message is given
when it is queued (made from the sending domain, so it reads as ours)."""
from __future__ import annotations

import email.utils
import functools


def ascii_address(address: str) -> str:
    """The envelope/header form: IDN domains in Punycode (the local part is ASCII by signup policy)."""
    # validate_email costs ~0.1 ms and ran three times per email. An ASCII address whose domain
    # is already lower case is returned unchanged by it (valid or not), so it is returned as is here;
    # tests/test_fast_paths.py compares both paths.
    if address.isascii() and (domain := address.rpartition("@")[2]) == domain.lower():
        return address
    return _ascii_address(address)


@functools.lru_cache(maxsize=1024)  # From addresses repeat on every email of a campaign
def _ascii_address(address: str) -> str:
    from email_validator import EmailNotValidError, validate_email  # only for a non-ASCII or upper-case domain

    try:
        return validate_email(address, check_deliverability=False, test_environment=True).ascii_email or address
    except EmailNotValidError:
        return address


@functools.lru_cache(maxsize=256)
def sender_address(from_header: str) -> str:
    """The ASCII address of a From header (one per campaign, so cached)."""
    return ascii_address(email.utils.parseaddr(from_header)[1])


def new_message_id(from_address: str, message_pk: int, nonce: str) -> str:
    domain = sender_address(from_address).rpartition("@")[2] or "drip.invalid"
    return f"<drip.{message_pk}.{nonce}@{domain}>"


# Mail services where dots in the local part are ignored: first.last@ and firstlast@ are one inbox.
DOTLESS_DOMAINS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def mailbox_key(email_key: str) -> str:
    """The inbox an address delivers to, for limits that protect a person's inbox: the `+tag` of
    subaddressing (RFC 5233, honoured by nearly every large provider) dropped, and for Gmail the dots and
    the googlemail.com alias too. Never used to send or to tell readers apart: ada+news@ stays its own
    subscriber; only the per-address signup limit counts the variants of one inbox together."""
    local, at, domain = email_key.lower().rpartition("@")
    if not at:
        return email_key.lower()
    base = local.split("+", 1)[0] or local  # a local part that starts with "+" keeps it
    if domain in DOTLESS_DOMAINS:
        domain = DOTLESS_DOMAINS[domain]
        base = base.replace(".", "") or base
    return f"{base}@{domain}"
