"""What the HTTP API transports share: a bounded pool of concurrent keep-alive requests per pass (or the
provider's batch endpoint), timeouts, and one reading of status codes (docs/providers.md, "Retry rules").

- 2xx: accepted; the provider's message id is kept on the message row.
- 401/403: our key is wrong or revoked. That is not the recipient's fault, so no message fails: the
  transport raises `TransportError(auth_failed=True)` and the dispatcher pauses all sending.
- 429: transient, retried no sooner than `Retry-After` / `X-RateLimit-Reset` / `ratelimit-reset` say;
  nothing more goes out in that pass, and the emails not yet sent wait as long without counting an attempt.
- 5xx, 408, 409, timeouts, dropped connections: transient, retried with backoff. A timeout after the
  request was sent is ambiguous; only Resend's Idempotency-Key makes the retry safe, elsewhere the retry
  can duplicate the emails of that request (the documented trade-off, chosen over losing them).
- other 4xx: a validation error for this message; it fails without retry and without suppressing.
"""
from __future__ import annotations

import email.utils
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
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

    def concurrency(self, default: int) -> int:
        """`concurrency=N`: requests in flight at once (1 sends one after another)."""
        return self._positive("concurrency", default, 256)

    def batch_size(self, default: int, most: int) -> int:
        """`batch=N`: emails per request, at most the provider's own limit (1 where it has no batch endpoint)."""
        return self._positive("batch", default, most) if most > 1 else 1

    def _positive(self, name: str, default: int, most: int) -> int:
        value = self.query.get(name, str(default))
        if not value.isdigit() or not 1 <= int(value) <= most:
            raise ConfigError(f"DRIP_EMAIL_URL: {name} must be a whole number from 1 to {most}, got {value!r}")
        return int(value)


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


class HttpTransport:
    """Base class: subclasses build one request per email (`request`), or one per batch of up to
    `batch_size` emails where the provider has a batch endpoint (`request_batch`, `classify_batch`).

    Requests go out through a bounded pool: up to `concurrency` of them in flight (`?concurrency=N` in
    DRIP_EMAIL_URL), each thread with its own keep-alive `requests.Session`, so a pass waits for one
    round trip per `concurrency` requests rather than per email. The first request of a transport goes
    alone: a wrong key or an unreachable API shows on one request, not on `concurrency` of them.
    Results are still yielded one per email, in the order the emails were taken."""

    name = "http"
    batch_size = 1  # emails per request by default
    most_per_batch = 1  # the provider's limit (1: no batch endpoint)
    default_concurrency = 16  # requests in flight
    idempotent = False  # the provider dedupes a repeated request by its Idempotency-Key

    def __init__(self, url: ApiUrl) -> None:
        self.url = url
        self.timeout = url.timeout()
        self.concurrency = url.concurrency(self.default_concurrency)
        self.batch_size = url.batch_size(type(self).batch_size, self.most_per_batch)
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._proven = False  # a request of this transport was answered (not 401/403, not refused)
        self._proxies: dict[str, str] | None = None

    @property
    def session(self) -> requests.Session:
        """This thread's session: `requests.Session` is not meant to be shared between threads."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = "drip/0.1"
            # The environment's proxy settings are read once per transport, not on every request: with
            # trust_env on, requests re-reads them (and ~/.netrc) per call, ~40 % of its CPU per request.
            session.trust_env = False
            if self._proxies is None:  # HTTP(S)_PROXY / NO_PROXY for the API's base URL, as requests reads them
                self._proxies = requests.utils.get_environ_proxies(getattr(self, "base", ""))
            session.proxies = dict(self._proxies)
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def request(self, item: OutboundEmail) -> requests.Response:
        """Send one email to the provider's API (providers without a batch endpoint)."""
        raise NotImplementedError

    def request_batch(self, items: Sequence[OutboundEmail]) -> requests.Response:
        """Send several emails in one request (providers with a batch endpoint)."""
        raise NotImplementedError

    def classify_batch(self, items: Sequence[OutboundEmail], response: requests.Response) -> list[SendResult]:
        """One result per email of a 2xx batch answer (providers with a batch endpoint)."""
        raise NotImplementedError

    def provider_id(self, response: requests.Response) -> str | None:
        return None

    def send(self, batch: Iterable[OutboundEmail]) -> Iterator[SendResult]:
        feed = iter(batch)
        pending: deque[tuple[list[OutboundEmail], Future]] = deque()
        staged: deque[list[OutboundEmail]] = deque()  # composed, waiting for the first answer
        stop: Exception | None = None  # once set, nothing more is sent; raised after the answers in flight
        while True:
            while stop is None and len(pending) < (self.concurrency if self._proven else 1):
                items = staged.popleft() if staged else self._take(feed)
                if isinstance(items, Exception):
                    stop = items
                elif items:
                    pending.append((items, self._executor().submit(self.call, items)))
                    continue
                break
            while stop is None and not self._proven and pending and len(staged) < self.concurrency - 1:
                # While the first request is out, the next batches are composed, not sent.
                items = self._take(feed)
                if isinstance(items, Exception):
                    stop = items
                elif items:
                    staged.append(items)
                    continue
                break
            if not pending:
                break
            items, future = pending.popleft()
            results, stop = self._answers(items, future, stop, last=not pending)
            yield from results
        if stop is not None:
            raise stop

    def _take(self, feed: Iterator[OutboundEmail]) -> list[OutboundEmail] | Exception:
        """The next request's emails, composed here in the dispatcher's thread ([] when the feed is done).
        If the feed fails (its database, in a re-check) while requests are out, the error is returned:
        their answers are yielded first, so the emails they carried are recorded as sent rather than sent
        again after the lease, and then the error goes on."""
        try:
            return list(islice(feed, self.batch_size))
        except Exception as exc:
            return exc

    def _answers(self, items: list[OutboundEmail], future: Future, stop: Exception | None,
                 *, last: bool) -> tuple[list[SendResult], Exception | None]:
        """The results of one request, and what stops the pass after it (if anything does)."""
        try:
            results = future.result()
        except TransportError as exc:
            if last and (stop is None or isinstance(stop, TransportError) and exc.auth_failed):
                raise  # nothing after it: its emails are the dispatcher's to hand back
            # Later requests are already out: their answers are real and are yielded; these emails were
            # not sent (or not knowingly), so they wait without counting an attempt. Refused credentials
            # outrank a rate limit: sending must pause.
            if stop is None or (exc.auth_failed and isinstance(stop, TransportError)):
                stop = exc
            return [SendResult(ok=False, error=str(exc), retry_after=exc.retry_after, transport=True)
                    for _ in items], stop
        self._proven = True
        waits = [r.retry_after or 0.0 for r in results if r.code == 429]
        if waits and stop is None:
            # Rate limited: nothing more goes out in this pass; the emails not yet taken wait (without
            # counting an attempt) at least as long as the provider asked.
            stop = TransportError(f"{self.name}: rate limited (429)", retry_after=max(waits) or None)
        return results, stop

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=f"drip-{self.name}")
        return self._pool

    def call(self, items: list[OutboundEmail]) -> list[SendResult]:
        """One request for `items` (in a pool thread): one result per email, or TransportError for the
        failures that are the transport's (API unreachable, credentials refused)."""
        try:
            try:
                response = self._post(items)
            except requests.Timeout:
                if not self.idempotent:
                    raise
                # The same request again, with the same Idempotency-Key: the provider answers a repeat
                # with the first outcome instead of sending twice, so this settles the doubt at once.
                response = self._post(items)
        except requests.Timeout as exc:
            # Ambiguous: the provider may have accepted them. Retried like any transient failure.
            return [SendResult(ok=False, error=f"{self.name}: timed out ({type(exc).__name__}); outcome unknown")
                    for _ in items]
        except requests.ConnectionError as exc:
            raise TransportError(f"{self.name}: cannot reach the API: {exc}") from None
        except requests.RequestException as exc:  # a broken response: transient for these messages
            return [SendResult(ok=False, error=f"{self.name}: {type(exc).__name__}: {exc}") for _ in items]
        if self.batch_size > 1 and 200 <= response.status_code < 300:
            return self.classify_batch(items, response)
        result = self.classify(response)  # raises for 401/403
        return [result] * len(items)

    def _post(self, items: list[OutboundEmail]) -> requests.Response:
        return self.request(items[0]) if self.batch_size == 1 else self.request_batch(items)

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
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()


def _short(response: requests.Response) -> str:
    return " ".join(response.text.split())[:300]
