"""Signed, opaque tokens for links in emails (itsdangerous, one salt per purpose).

An unsubscribe token carries the subscriber's random public id and the campaign, never the address or
a row id. Tokens stay valid for `max_age_days` (CAN-SPAM asks for at least 30; we default to 400).
"""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from itsdangerous import BadSignature, TimestampSigner, URLSafeTimedSerializer

UNSUBSCRIBE_SALT = "drip.unsubscribe.v1"
PREFERENCES_SALT = "drip.preferences.v1"  # payload: [public_id]
VIEW_SALT = "drip.view.v1"  # payload: [message primary key]


class BadToken(ValueError):
    pass


# itsdangerous through its documented API only (pinned below 3 in pyproject.toml): the signer's settings are
# spelled out here, not read from its attributes, so a token made by `_dumps` below and one made by
# `URLSafeTimedSerializer(...).dumps` stay byte for byte the same (tests/test_fast_paths.py checks it).
SIGNER = {"key_derivation": "django-concat", "digest_method": hashlib.sha1}


@functools.lru_cache(maxsize=64)
def _serializer(secret_key: str, salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt=salt, signer_kwargs=SIGNER)


def _dumps(secret_key: str, salt: str, obj: object) -> str:
    """`URLSafeTimedSerializer(secret_key, salt=salt).dumps(obj)`: ~5 us against the library's ~60
    (three tokens in every email were a tenth of composing it). The library's own steps, without its
    per-call objects: compact JSON, URL-safe base64, the timestamp, HMAC-SHA1 with the key the library
    derives. One step is left out: the library tries zlib on every payload and keeps it when shorter,
    ~14 us a token; our payloads (a random public id, a campaign key, a row id) are too short and too
    random for it to shorten, so the token is the library's bytes (tests/test_fast_paths.py compares
    both, time frozen). A payload it could shorten (a long repetitive campaign key) gives a longer token
    than the library's, which `loads` reads all the same, as it reads compressed tokens made before."""
    payload = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    value = _b64(payload) + b"." + _b64(int(time.time()).to_bytes(8, "big").lstrip(b"\x00"))
    mac = _mac(secret_key, salt).copy()
    mac.update(value)
    return (value + b"." + _b64(mac.digest())).decode("ascii")


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@functools.lru_cache(maxsize=64)
def _mac(secret_key: str, salt: str) -> hmac.HMAC:
    """The HMAC the library signs with, keyed once per (secret, salt): `Signer.derive_key` is public API."""
    key = TimestampSigner(secret_key, salt=salt, **SIGNER).derive_key()
    return hmac.new(key, digestmod=SIGNER["digest_method"])


@dataclass(frozen=True)
class UnsubscribeClaim:
    public_id: str
    campaign: str


def make_unsubscribe_token(secret_key: str, *, public_id: str, campaign: str) -> str:
    return _dumps(secret_key, UNSUBSCRIBE_SALT, [public_id, campaign])


def read_unsubscribe_token(secret_key: str, token: str, *, max_age_days: int) -> UnsubscribeClaim:
    return _claim(_loads(secret_key, UNSUBSCRIBE_SALT, token, max_age_days))


def _claim(data: object) -> UnsubscribeClaim:
    """A [public id, campaign] payload (unsubscribe and confirm links), or BadToken."""
    if not (isinstance(data, list) and len(data) == 2 and all(isinstance(x, str) for x in data)):
        raise BadToken("malformed token")
    return UnsubscribeClaim(public_id=data[0], campaign=data[1])


# -- the reader's own pages: preferences and view in browser ------------------------------------------
def _loads(secret_key: str, salt: str, token: str, max_age_days: int) -> object:
    if len(token) > 400:
        raise BadToken("token too long")
    try:
        return _serializer(secret_key, salt).loads(token, max_age=max_age_days * 86400)
    except BadSignature as exc:  # includes SignatureExpired
        raise BadToken(str(exc)) from None


def make_preferences_token(secret_key: str, *, public_id: str) -> str:
    """The preference page link: whoever holds it manages this subscriber, like the unsubscribe link."""
    return _dumps(secret_key, PREFERENCES_SALT, [public_id])


def read_preferences_token(secret_key: str, token: str, *, max_age_days: int) -> str:
    """The subscriber's public id, or BadToken."""
    data = _loads(secret_key, PREFERENCES_SALT, token, max_age_days)
    if not (isinstance(data, list) and len(data) == 1 and isinstance(data[0], str)):
        raise BadToken("malformed token")
    return data[0]


def make_view_token(secret_key: str, *, message_pk: int) -> str:
    """The view-in-browser link of one message."""
    return _dumps(secret_key, VIEW_SALT, [message_pk])


def read_view_token(secret_key: str, token: str, *, max_age_days: int) -> int:
    data = _loads(secret_key, VIEW_SALT, token, max_age_days)
    if not (isinstance(data, list) and len(data) == 1 and isinstance(data[0], int) and not isinstance(data[0], bool)):
        raise BadToken("malformed token")
    return data[0]


# Double opt-in has its own salt, so an unsubscribe token can never confirm a signup (or the reverse).
CONFIRM_SALT = "drip.confirm.v1"


def make_confirm_token(secret_key: str, *, public_id: str, campaign: str) -> str:
    return _dumps(secret_key, CONFIRM_SALT, [public_id, campaign])


def read_confirm_token(secret_key: str, token: str, *, max_age_days: int) -> UnsubscribeClaim:
    """(public id, campaign) of a confirm link; BadToken when forged, malformed or older than the expiry."""
    return _claim(_loads(secret_key, CONFIRM_SALT, token, max_age_days))


# The console's "this browser has logged in to this account before" cookie. Its login attempts are counted
# per browser, not per account, so a stranger failing against the account cannot lock its owner out.
DEVICE_SALT = "drip.login-device.v1"


def make_device_token(secret_key: str, *, user_id: int, device: str) -> str:
    return _dumps(secret_key, DEVICE_SALT, [user_id, device])


def read_device_token(secret_key: str, token: str, *, max_age_days: int) -> tuple[int, str]:
    """(user id, device id), or BadToken."""
    data = _loads(secret_key, DEVICE_SALT, token, max_age_days)
    if not (isinstance(data, list) and len(data) == 2 and isinstance(data[0], int) and isinstance(data[1], str)):
        raise BadToken("malformed token")
    return data[0], data[1]


# An invitation's "yes" link: its own salt, so no other Drip token joins anyone to anything.
JOIN_SALT = "drip.join.v1"  # payload: [public_id, the inviting campaign]


def make_join_token(secret_key: str, *, public_id: str, campaign: str) -> str:
    return _dumps(secret_key, JOIN_SALT, [public_id, campaign])


def read_join_token(secret_key: str, token: str, *, max_age_days: int) -> UnsubscribeClaim:
    """(public_id, inviting campaign) of a join link; BadToken if tampered, foreign or expired."""
    return _claim(_loads(secret_key, JOIN_SALT, token, max_age_days))


# The reader's data (download or erasure) opens only from a link emailed to their own address, so a
# forwarded email's preference link cannot reach it. Short-lived: the reader asked a moment ago.
DATA_SALT = "drip.data.v1"  # payload: [public_id, "export" or "erase"]
DATA_ACTIONS = ("export", "erase")


def make_data_token(secret_key: str, *, public_id: str, action: str) -> str:
    if action not in DATA_ACTIONS:
        raise ValueError(f"unknown data action {action!r}")
    return _dumps(secret_key, DATA_SALT, [public_id, action])


def read_data_token(secret_key: str, token: str, *, max_age_seconds: int) -> tuple[str, str]:
    """(public_id, action); BadToken if tampered, foreign or older than `max_age_seconds`."""
    if len(token) > 400:
        raise BadToken("token too long")
    try:
        data = _serializer(secret_key, DATA_SALT).loads(token, max_age=max_age_seconds)
    except BadSignature as exc:  # includes SignatureExpired
        raise BadToken(str(exc)) from None
    if (not isinstance(data, list) or len(data) != 2 or not all(isinstance(x, str) for x in data)
            or data[1] not in DATA_ACTIONS):
        raise BadToken("invalid link")
    return data[0], data[1]
