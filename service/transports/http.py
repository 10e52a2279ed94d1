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
import json
import logging
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from urllib.parse import parse_qs, unquote, urlsplit

import urllib3
from requests.certs import where as ca_bundle
from urllib3.exceptions import (
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ProxySchemeUnknown,
    SSLError,
    TimeoutError,
)

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


class Response:
    """An answer, read whole: what the transports look at of it."""

    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code: int, headers: Mapping[str, str], content: bytes) -> None:
        self.status_code, self.headers, self.content = status_code, headers, content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> object:
        return json.loads(self.content)  # ValueError (JSONDecodeError) when it is not JSON


class Timeout(Exception):
    """No answer in time (connecting or reading)."""


class Unreachable(Exception):
    """No connection to the API, or it dropped before answering."""


class BrokenAnswer(Exception):
    """The API answered something that is not HTTP."""


class Client:
    """POSTs over keep-alive connections, shared by the transport's threads (urllib3 pools connections per
    host, `concurrency` of them). Why not `requests`: it costs ~1 ms of CPU per call on this machine, twice
    urllib3's (which it is built on), for features these calls do not use (cookies, redirects, hooks,
    environment lookups per call); for the single-email APIs, which make one call per email, that was most
    of the worker's CPU. Certificates are checked against the same bundle `requests` uses (certifi); an
    HTTP(S)_PROXY / NO_PROXY of the environment applies as in `requests`, read once: a proxy without a
    scheme is http://, and its user and password go in a Proxy-Authorization header."""

    def __init__(self, base: str, *, size: int, timeout: tuple[float, float]) -> None:
        self.timeout = urllib3.Timeout(connect=timeout[0], read=timeout[1])
        options = dict(maxsize=size, block=False, retries=False, timeout=self.timeout, ca_certs=ca_bundle())
        proxy = proxy_for(base)
        if proxy is None:
            self.pool = urllib3.PoolManager(**options)
        else:
            url, headers = proxy
            try:
                self.pool = urllib3.ProxyManager(url, proxy_headers=headers, **options)
            except (ProxySchemeUnknown, ValueError) as exc:
                raise ConfigError(f"HTTPS_PROXY / HTTP_PROXY: {exc}; give it as http://host:port") from None

    def post(self, url: str, *, json_body: object = None, fields: Mapping[str, object] | None = None,
             body: bytes | None = None, headers: Mapping[str, str] | None = None,
             auth: tuple[str, str] | None = None) -> Response:
        """One POST: a JSON body (`json_body`), a multipart form (`fields`, urllib3's format), or bytes."""
        sent = {"User-Agent": "drip/0.1", **(headers or {})}
        if json_body is not None:
            body = json.dumps(json_body).encode()
            sent.setdefault("Content-Type", "application/json")
        elif fields is not None:
            body, sent["Content-Type"] = urllib3.encode_multipart_formdata(fields)
        if auth is not None:
            sent.update(urllib3.make_headers(basic_auth=f"{auth[0]}:{auth[1]}"))
        try:
            answer = self.pool.request("POST", url, body=body, headers=sent, redirect=False)
        except (HTTPError, OSError) as exc:
            raise _failure(exc) from None
        return Response(answer.status, answer.headers, answer.data)

    def close(self) -> None:
        self.pool.clear()


def _failure(exc: Exception) -> Exception:
    """urllib3's exception as one of ours. A refused connection is a NewConnectionError, which urllib3
    also makes a kind of timeout: it is checked first. A MaxRetryError wraps what happened."""
    cause = getattr(exc, "reason", None) or exc
    # The TLS handshake failed (a bad certificate bundle, an intercepting proxy, a plain-HTTP port), or the
    # proxy refused or could not be reached: no request reached the provider, and every email of the pass
    # would meet the same, so the pass stops and they wait, counting no attempt (as `requests` sorted them).
    if isinstance(exc, (SSLError, ProxyError)) or isinstance(cause, (SSLError, ProxyError)):
        return Unreachable(f"{type(cause).__name__}: {cause}")
    if isinstance(cause, NewConnectionError):
        return Unreachable(str(cause))
    if isinstance(cause, TimeoutError):
        return Timeout(str(cause))
    if isinstance(cause, (ProtocolError, OSError)):  # reset or closed before the answer, as `requests` sorts it
        return Unreachable(str(cause))
    return BrokenAnswer(f"{type(cause).__name__}: {cause}")


def proxy_for(base: str) -> tuple[str, dict[str, str]] | None:
    """The proxy the environment names for `base` (HTTP(S)_PROXY, unless NO_PROXY exempts its host), as
    (its URL without user and password, the headers that carry them), or None."""
    parts = urlsplit(base)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy  # what `requests` assumes for "proxy.example:3128"
    scheme, netloc, path, _, _ = urlsplit(proxy)
    userinfo, at, hostport = netloc.rpartition("@")
    headers: dict[str, str] = {}
    if at:
        user, _, password = userinfo.partition(":")
        headers = urllib3.make_headers(proxy_basic_auth=f"{unquote(user)}:{unquote(password)}")
    return f"{scheme}://{hostport}{path}", headers


class HttpTransport:
    """Base class: subclasses build one request per email (`request`), or one per batch of up to
    `batch_size` emails where the provider has a batch endpoint (`request_batch`, `classify_batch`).

    Requests go out through a bounded pool: up to `concurrency` of them in flight (`?concurrency=N` in
    DRIP_EMAIL_URL), over as many keep-alive connections (`Client`), so a pass waits for one
    round trip per `concurrency` requests rather than per email. The first request of a transport goes
    alone: a wrong key or an unreachable API shows on one request, not on `concurrency` of them.
    Results are still yielded one per email, in the order the emails were taken."""

    name = "http"
    batch_size = 1  # emails per request by default
    most_per_batch = 1  # the provider's limit (1: no batch endpoint)
    default_concurrency = 16  # requests in flight
    idempotent = False  # the provider dedupes a repeated request by its Idempotency-Key
    # Emails per dispatcher chunk (send.py, 250 by default). The requests in flight are answered at the end
    # of each chunk, a round trip with nothing to compose meanwhile; a claim (DRIP_BATCH_SIZE, 500) taken
    # as one chunk waits it once instead of twice.
    chunk = 1000

    def __init__(self, url: ApiUrl) -> None:
        self.url = url
        self.timeout = url.timeout()
        self.concurrency = url.concurrency(self.default_concurrency)
        self.batch_size = url.batch_size(type(self).batch_size, self.most_per_batch)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._proven = False  # a request of this transport was answered (not 401/403, not refused)
        self._client: Client | None = None

    @property
    def http(self) -> Client:
        """The transport's connections, made on first use (subclasses set `base` in their __init__). An
        unusable proxy setting stops the pass with its reason, like an unreachable API."""
        with self._lock:
            if self._client is None:
                try:
                    self._client = Client(getattr(self, "base", ""), size=self.concurrency, timeout=self.timeout)
                except ConfigError as exc:
                    raise TransportError(f"{self.name}: {exc}") from None
            return self._client

    def request(self, item: OutboundEmail) -> Response:
        """Send one email to the provider's API (providers without a batch endpoint)."""
        raise NotImplementedError

    def request_batch(self, items: Sequence[OutboundEmail]) -> Response:
        """Send several emails in one request (providers with a batch endpoint)."""
        raise NotImplementedError

    def classify_batch(self, items: Sequence[OutboundEmail], response: Response) -> list[SendResult]:
        """One result per email of a 2xx batch answer (providers with a batch endpoint)."""
        raise NotImplementedError

    def provider_id(self, response: Response) -> str | None:
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
            except Timeout:
                if not self.idempotent:
                    raise
                # The same request again, with the same Idempotency-Key: the provider answers a repeat
                # with the first outcome instead of sending twice, so this settles the doubt at once.
                response = self._post(items)
        except Timeout as exc:
            # Ambiguous: the provider may have accepted them. Retried like any transient failure.
            return [SendResult(ok=False, error=f"{self.name}: timed out ({exc}); outcome unknown")
                    for _ in items]
        except Unreachable as exc:
            raise TransportError(f"{self.name}: cannot reach the API: {exc}") from None
        except BrokenAnswer as exc:  # a broken response: transient for these messages
            return [SendResult(ok=False, error=f"{self.name}: {exc}") for _ in items]
        if self.batch_size > 1 and 200 <= response.status_code < 300:
            return self.classify_batch(items, response)
        result = self.classify(response)  # raises for 401/403
        return [result] * len(items)

    def _post(self, items: list[OutboundEmail]) -> Response:
        return self.request(items[0]) if self.batch_size == 1 else self.request_batch(items)

    def classify(self, response: Response) -> SendResult:
        status = response.status_code
        text = f"{self.name} {status}: {_short(response)}"
        if 200 <= status < 300:
            return SendResult(ok=True, code=status, provider_id=self.provider_id(response))
        if status in (401, 403):
            raise TransportError(f"{self.name} refused our credentials ({status}): {_short(response)}",
                                 auth_failed=True)
        if 300 <= status < 400:
            # Redirects are not followed (a POST must not be replayed elsewhere), and they are not the
            # recipient's fault: the endpoint is wrong. The pass stops and the emails wait, counting no attempt.
            where = response.headers.get("Location", "")
            to = f" to {where}" if where else ""
            raise TransportError(f"{self.name}: the API answered {status} (a redirect{to}); "
                                 "check endpoint= in DRIP_EMAIL_URL")
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
            if self._client is not None:
                self._client.close()
                self._client = None


def _short(response: Response) -> str:
    return " ".join(response.text.split())[:300]
