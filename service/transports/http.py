"""What the HTTP API transports share: one `requests.Session` per pass, timeouts, and one reading of
status codes (docs/providers.md, "Retry rules").

- 2xx: accepted; the provider's message id is kept on the message row.
- 401/403: our key is wrong or revoked. That is not the recipient's fault, so no message fails: the
  transport raises `TransportError(auth_failed=True)` and the dispatcher pauses all sending.
- 429: transient, retried no sooner than `Retry-After` / `X-RateLimit-Reset` / `ratelimit-reset` say.
- 5xx, 408, 409, timeouts, dropped connections: transient, retried with backoff. A timeout after the
  request was sent is ambiguous; only Resend's Idempotency-Key makes the retry safe, elsewhere the retry
  can duplicate one email (the documented trade-off, chosen over losing it).
- other 4xx: a validation error for this message; it fails without retry and without suppressing.
"""
from __future__ import annotations

import abc
import email.utils
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import requests

from service.core import outbound_urls
from service.core.config import ConfigError
from service.transports.base import OutboundEmail, SendResult, TransportError

log = logging.getLogger(__name__)

# Headers the APIs set themselves (or that the structured fields already carry).
OWN_HEADERS = frozenset({"from", "to", "subject", "date", "mime-version", "content-type",
                         "content-transfer-encoding", "dkim-signature", "message-id"})


@dataclass(frozen=True)
class ApiUrl:
    """DRIP_EMAIL_URL for an API: `scheme://USER[:PASSWORD]@HOST?query` with secrets percent-encoded."""

    scheme: str
    user: str
    password: str
    host: str
    query: Mapping[str, str]

    @classmethod
    def parse(cls, url: str) -> ApiUrl:
        parts = urlsplit(url)
        netloc = parts.netloc
        userinfo, _, host = netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        return cls(parts.scheme, unquote(user), unquote(password), unquote(host),
                   {k: v[-1] for k, v in parse_qs(parts.query).items()})

    def require(self, value: str, what: str, example: str) -> str:
        if not value:
            raise ConfigError(f"DRIP_EMAIL_URL: {self.scheme} needs {what}, e.g. {example}")
        return value

    def endpoint(self, default: str) -> str:
        """`endpoint=` replaces the provider's base URL: for tests (a local fake) and HTTP proxies."""
        value = self.query.get("endpoint", default).rstrip("/")
        try:  # the same strictness as every URL Drip fetches (service/core/outbound_urls.py)
            return outbound_urls.check(value, allow_http_loopback=True, allow_port=True).url.rstrip("/")
        except outbound_urls.UnsafeUrl as exc:
            raise ConfigError(f"DRIP_EMAIL_URL: endpoint must be a plain https URL (http only to loopback): "
                              f"{exc}") from None

    def timeout(self) -> tuple[float, float]:
        try:
            read = float(self.query.get("timeout", 30))
        except ValueError:
            raise ConfigError("DRIP_EMAIL_URL: timeout must be a number of seconds") from None
        return (min(read, 10.0), read)


def wait_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait a 429 asks for: Retry-After (seconds or a date), else a reset header (epoch or seconds)."""
    now = time.time() if now is None else now
    value = headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value) if value.strip() else None
            if parsed is not None:
                return max(0.0, parsed.timestamp() - now)
    for name in ("X-RateLimit-Reset", "ratelimit-reset"):
        value = headers.get(name)
        if value:
            try:
                number = float(value)
            except ValueError:
                continue
            return max(0.0, number - now) if number > 1e9 else max(0.0, number)  # epoch, or seconds left
    return None


def custom_headers(item: OutboundEmail) -> dict[str, str]:
    """List-Unsubscribe, List-Unsubscribe-Post, List-Id and any other header compose added."""
    return {k: v for k, v in item.headers if k.lower() not in OWN_HEADERS}


def split_address(header: str) -> tuple[str, str]:
    name, addr = email.utils.parseaddr(header)
    return name, addr


class HttpTransport(abc.ABC):
    """Base class: subclasses build one request per email and may refine `classify`."""

    name = "http"

    def __init__(self, url: ApiUrl) -> None:
        self.url = url
        self.timeout = url.timeout()
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "drip/0.1"

    @abc.abstractmethod
    def request(self, item: OutboundEmail) -> requests.Response:
        """Send one email to the provider's API."""

    def provider_id(self, response: requests.Response) -> str | None:
        return None

    def send(self, batch: Sequence[OutboundEmail]) -> Iterator[SendResult]:
        for item in batch:
            try:
                response = self.request(item)
            except requests.Timeout as exc:
                # Ambiguous: the provider may have accepted it. Retried like any transient failure.
                yield SendResult(ok=False, error=f"{self.name}: timed out ({type(exc).__name__}); outcome unknown")
                continue
            except requests.ConnectionError as exc:
                raise TransportError(f"{self.name}: cannot reach the API: {exc}") from None
            except requests.RequestException as exc:  # a broken response: transient for this message
                yield SendResult(ok=False, error=f"{self.name}: {type(exc).__name__}: {exc}")
                continue
            yield self.classify(response)

    def classify(self, response: requests.Response) -> SendResult:
        status = response.status_code
        text = f"{self.name} {status}: {_short(response)}"
        if 200 <= status < 300:
            return SendResult(ok=True, code=status, provider_id=self.provider_id(response))
        if status in (401, 403):
            raise TransportError(f"{self.name} refused our credentials ({status}): {_short(response)}",
                                 auth_failed=True)
        if status == 429:
            return SendResult(ok=False, code=status, error=text, retry_after=wait_seconds(response.headers))
        if status >= 500 or status in (408, 409, 425):
            return SendResult(ok=False, code=status, error=text, retry_after=wait_seconds(response.headers))
        return SendResult(ok=False, permanent=True, code=status, error=text)

    def close(self) -> None:
        self.session.close()


def _short(response: requests.Response) -> str:
    return " ".join(response.text.split())[:300]
