"""Verifying provider webhooks, each the provider's documented way, over the raw request body.

Every function takes plain values (headers, raw bytes, the clock) and either returns or raises
`Rejected` with the HTTP status to answer; nothing here parses the body before it is verified, except
Mailgun (its signature is inside the JSON and does not cover the events) and SNS (the signature is a
field of the JSON document and covers named fields of it).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import threading
from collections.abc import Callable, Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from service.core import outbound_urls

TOLERANCE_SECONDS = 300  # Svix and SendGrid: 5 minutes either way
MAILGUN_TOLERANCE_SECONDS = 900  # Mailgun recommends "freshness"; 15 minutes as in its examples
AWS_CERT_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?")


class Rejected(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _fresh(timestamp: str, now: float, tolerance: float) -> None:
    try:
        ts = float(timestamp)
    except (TypeError, ValueError):
        raise Rejected(401, "missing or malformed timestamp") from None
    if abs(now - ts) > tolerance:
        raise Rejected(401, "timestamp outside the tolerance window")


# -- SendGrid: ECDSA P-256 over timestamp + body -----------------------------------------------------
def verify_sendgrid(public_key_b64: str, headers: Mapping[str, str], body: bytes, *, now: float,
                    tolerance: float = TOLERANCE_SECONDS) -> None:
    signature = headers.get("X-Twilio-Email-Event-Webhook-Signature", "")
    timestamp = headers.get("X-Twilio-Email-Event-Webhook-Timestamp", "")
    if not signature or not timestamp:
        raise Rejected(401, "missing SendGrid signature headers")
    _fresh(timestamp, now, tolerance)
    try:
        key = serialization.load_der_public_key(base64.b64decode(public_key_b64))
        raw_sig = base64.b64decode(signature, validate=True)
    except (ValueError, binascii.Error):
        raise Rejected(401, "malformed SendGrid signature or key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise Rejected(403, "DRIP_SENDGRID_WEBHOOK_KEY is not an ECDSA public key")
    try:
        key.verify(raw_sig, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise Rejected(403, "SendGrid signature does not verify") from None


# -- Mailgun: HMAC-SHA256(signing key, timestamp + token); token used once ---------------------------
def verify_mailgun(signing_key: str, document: object, *, now: float,
                   tolerance: float = MAILGUN_TOLERANCE_SECONDS) -> str:
    """Returns the token, which the caller must record as used (replay cache)."""
    sig = document.get("signature") if isinstance(document, dict) else None
    if not isinstance(sig, dict) or not all(isinstance(sig.get(k), str | int) for k in
                                            ("timestamp", "token", "signature")):
        raise Rejected(401, "missing Mailgun signature block")
    timestamp, token = str(sig["timestamp"]), str(sig["token"])
    _fresh(timestamp, now, tolerance)
    expected = hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, str(sig["signature"])):
        raise Rejected(403, "Mailgun signature does not verify")
    return token


# -- Postmark: Basic auth credentials in the webhook URL ---------------------------------------------
def verify_basic(user: str, password: str, authorization: str | None) -> None:
    if not authorization or not authorization.lower().startswith("basic "):
        raise Rejected(401, "Basic auth required")
    try:
        given = base64.b64decode(authorization[6:].strip(), validate=True)
    except (ValueError, binascii.Error):
        raise Rejected(401, "malformed Basic auth") from None
    expected = f"{user}:{password}".encode()
    if not hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(expected).digest()):
        raise Rejected(401, "wrong webhook credentials")


# -- Resend (Svix): HMAC-SHA256 over "id.timestamp.body", several v1 signatures ----------------------
def verify_svix(secret: str, headers: Mapping[str, str], body: bytes, *, now: float,
                tolerance: float = TOLERANCE_SECONDS) -> str:
    """Returns the svix-id (the same on every retry of one event)."""
    msg_id, timestamp, signatures = (headers.get(h, "") for h in ("svix-id", "svix-timestamp", "svix-signature"))
    if not (msg_id and timestamp and signatures):
        raise Rejected(401, "missing svix headers")
    _fresh(timestamp, now, tolerance)
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"))
    except (ValueError, binascii.Error):
        raise Rejected(403, "DRIP_RESEND_WEBHOOK_SECRET is not a whsec_ secret") from None
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest())
    for item in signatures.split():
        version, _, value = item.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return msg_id
    raise Rejected(403, "svix signature does not verify")


# -- Amazon SNS: RSA signature over named fields, certificate from an AWS host -----------------------
NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
CONFIRMATION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
_cert_cache: dict[str, rsa.RSAPublicKey] = {}
_cert_lock = threading.Lock()


def sns_string_to_sign(message: Mapping[str, object]) -> bytes:
    fields = NOTIFICATION_FIELDS if message.get("Type") == "Notification" else CONFIRMATION_FIELDS
    parts = []
    for name in fields:
        if name in message and message[name] is not None:
            parts.append(f"{name}\n{message[name]}\n")
    return "".join(parts).encode("utf-8")


def check_sns_url(url: str, extra_hosts: Sequence[str], what: str = "SigningCertURL") -> str:
    """The URL to fetch, rebuilt from checked parts: https on exactly `sns.<region>.amazonaws.com`, default
    port, no user name; a `host:port` in DRIP_SNS_CERT_HOSTS (tests, proxies) may also be loopback http."""
    try:
        return outbound_urls.check(url, host_pattern=AWS_CERT_HOST, extra_netlocs=extra_hosts,
                                   allow_http_loopback=True).url
    except outbound_urls.UnsafeUrl as exc:
        raise Rejected(403, f"{what} is not an SNS URL: {exc}") from None


def check_cert_url(url: str, extra_hosts: Sequence[str]) -> str:
    return check_sns_url(url, extra_hosts)


def verify_sns(message: Mapping[str, object], *, topic_arns: Sequence[str], cert_hosts: Sequence[str],
               fetch: Callable[[str], bytes]) -> None:
    if message.get("Type") not in ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"):
        raise Rejected(400, "not an SNS message")
    if message.get("TopicArn") not in topic_arns:
        raise Rejected(403, "unexpected TopicArn")
    version = str(message.get("SignatureVersion", ""))
    algorithm = {"1": hashes.SHA1(), "2": hashes.SHA256()}.get(version)  # noqa: S303 - SNS v1 is SHA1 by spec
    if algorithm is None:
        raise Rejected(403, "unsupported SignatureVersion")
    cert_url = str(message.get("SigningCertURL") or message.get("SigningCertUrl") or "")
    key = _public_key(check_cert_url(cert_url, cert_hosts), fetch)
    try:
        signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
        key.verify(signature, sns_string_to_sign(message), padding.PKCS1v15(), algorithm)
    except (InvalidSignature, ValueError, binascii.Error):
        raise Rejected(403, "SNS signature does not verify") from None


def _public_key(url: str, fetch: Callable[[str], bytes]) -> rsa.RSAPublicKey:
    with _cert_lock:
        cached = _cert_cache.get(url)
    if cached is not None:
        return cached
    try:
        key = x509.load_pem_x509_certificate(fetch(url)).public_key()
    except Exception:  # network error or not a certificate: this message cannot be verified
        raise Rejected(403, "cannot load the SNS signing certificate") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise Rejected(403, "SNS signing certificate is not RSA")
    with _cert_lock:
        _cert_cache[url] = key
    return key
