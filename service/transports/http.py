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

import asyncio
import email.utils
import functools
import json
import logging
import random
import ssl
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from itertools import islice
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

import urllib3
from requests.certs import where as ca_bundle
from urllib3 import HTTPHeaderDict

from service.core import outbound_urls
from service.core.config import ConfigError
from service.transports.base import OutboundEmail, SendResult, TransportError

log = logging.getLogger(__name__)

# Headers the APIs set themselves (or that the structured fields already carry).
OWN_HEADERS = frozenset({"from", "to", "subject", "date", "mime-version", "content-type",
                         "content-transfer-encoding", "dkim-signature", "message-id"})


_FORM_RANDOM = random.Random()  # seeded once from the system: boundaries need to be unlikely, not secret


def form_data(fields: Mapping[str, object]) -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/form-data form (RFC 7578): each value text, or a file given as
    (file name, bytes, content type). Written here rather than by urllib3's encoder, which spent ~30 us per
    email checking types. Field and file names are the transports' own constants, never a reader's."""
    boundary = f"drip-form-{_FORM_RANDOM.getrandbits(128):032x}"
    out: list[bytes] = []
    for name, value in fields.items():
        if isinstance(value, tuple):
            filename, data, content_type = value
            own = (name, filename, content_type)
            head = (f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                    f"Content-Type: {content_type}")
        else:
            own, data = (name,), str(value).encode()
            head = f'Content-Disposition: form-data; name="{name}"'
        if any(c in text for text in own for c in '"\r\n'):
            raise ValueError(f"form field {name!r}: a quote or line break in its name or file name")
        out.append(f"--{boundary}\r\n{head}\r\n\r\n".encode() + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def host_header(parts: SplitResult) -> str:
    """The Host header the client writes for a URL: its host and port as the URL gives them (a signature
    over the headers, such as SES's, signs this same value)."""
    return parts.netloc.rpartition("@")[2]


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
            url = outbound_urls.check(value, allow_http_loopback=True, allow_port=True).url.rstrip("/")
        except outbound_urls.UnsafeUrl as exc:
            raise ConfigError(f"DRIP_EMAIL_URL: endpoint must be a plain https URL (http only to loopback): "
                              f"{exc}") from None
        if urlsplit(url).query:  # the API's own paths are added after it, which would land inside a query
            raise ConfigError("DRIP_EMAIL_URL: endpoint is a base URL such as https://api.example.com/prefix, "
                              "without a ?query")
        return url

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
    """POSTs over keep-alive connections, all driven by one thread running an event loop: a request is
    built in the caller's thread (its JSON, form or bytes) and handed to that loop, and `post` returns a
    Future of its `Response`. Why not a thread per request in flight (urllib3 or `requests` in a pool):
    with 64 requests out, 64 threads took turns on the interpreter lock with the thread composing the
    emails, and urllib3 spent ~0.4 ms of CPU per call; the single-email APIs make one call per email, so
    that was most of a worker's CPU (docs/performance.md). Here a request costs the loop a write, a read
    and a header parse.

    At most `size` idle connections are kept per host. Certificates are checked against the bundle
    `requests` uses (certifi). An HTTP(S)_PROXY / NO_PROXY of the environment applies as in `requests`,
    read once: a proxy without a scheme is http://, its user and password go in a Proxy-Authorization
    header; https targets go through a CONNECT tunnel, http ones in the absolute form. Only http://
    proxies are supported. Connecting may take the connect timeout (at most 10 s); writing the request,
    and then each wait for the next part of the answer, the read timeout."""

    def __init__(self, base: str, *, size: int, timeout: tuple[float, float]) -> None:
        self.connect_timeout, self.read_timeout = timeout
        self.size = size
        self.proxy: tuple[str, int, dict[str, str]] | None = None
        found = proxy_for(base)
        if found is not None:
            url, headers = found
            parts = urlsplit(url)
            try:
                port = parts.port or 80
            except ValueError as exc:
                raise ConfigError(f"HTTPS_PROXY / HTTP_PROXY: {exc}; give it as http://host:port") from None
            if parts.scheme != "http" or not parts.hostname:
                raise ConfigError(f"HTTPS_PROXY / HTTP_PROXY: a {parts.scheme or 'schemeless'} proxy is not "
                                  "supported; give it as http://host:port")
            self.proxy = (parts.hostname, port, headers)
        self.tls = _trusted()
        self._idle: dict[tuple[str, str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._inbox: list[tuple[Future[Response], tuple[str, str, int, bytes]]] = []
        self._woken = False  # a wake-up of the loop is on its way: it will take the whole inbox
        self._tasks: set[asyncio.Task] = set()  # requests being exchanged (the loop keeps weak references)
        self._open_answers: set[Future[Response]] = set()  # handed out and not yet settled

    def post(self, url: str, *, json_body: object = None, fields: Mapping[str, object] | None = None,
             body: bytes | None = None, headers: Mapping[str, str] | None = None,
             auth: tuple[str, str] | None = None) -> Future[Response]:
        """Starts one POST: a JSON body (`json_body`), a multipart form (`fields`, see `form_data`), or
        bytes. The Future raises Timeout, Unreachable or BrokenAnswer when there is no usable answer."""
        sent = {"User-Agent": "drip/0.1", **(headers or {})}
        if json_body is not None:
            body = json.dumps(json_body).encode()
            sent.setdefault("Content-Type", "application/json")
        elif fields is not None:
            body, sent["Content-Type"] = form_data(fields)
        if auth is not None:
            sent.update(urllib3.make_headers(basic_auth=f"{auth[0]}:{auth[1]}"))
        body = body or b""
        parts = urlsplit(url)
        scheme, host = parts.scheme, parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        extra: dict[str, str] = {}
        if self.proxy is not None and scheme == "http":  # plain http through a proxy: the absolute form
            target, extra = f"http://{parts.netloc}{target}", self.proxy[2]
        lines = [f"POST {target} HTTP/1.1", f"Host: {host_header(parts)}",
                 f"Content-Length: {len(body)}", "Accept-Encoding: identity"]
        for name, value in {**sent, **extra}.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
                failed: Future[Response] = Future()  # a line break in a key would inject a header
                failed.set_exception(Unreachable(f"the {name} header holds a line break; check DRIP_EMAIL_URL"))
                return failed
            lines.append(f"{name}: {value}")
        try:
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError:
            failed = Future()
            failed.set_exception(Unreachable("a header holds characters HTTP cannot carry; check DRIP_EMAIL_URL"))
            return failed
        answer: Future[Response] = Future()
        with self._lock:
            loop = self._running()
            self._inbox.append((answer, (scheme, host, port, head + body)))
            self._open_answers.add(answer)
            if not self._woken:
                # One wake-up of the loop's thread for all the requests handed over until it runs: each
                # wake-up is a write to a socket, during which the interpreter lock may pass to that thread.
                self._woken = True
                loop.call_soon_threadsafe(self._take_inbox)
        return answer

    def _running(self) -> asyncio.AbstractEventLoop:
        """The loop's thread, started on first use (under self._lock)."""
        if self._loop is None:
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=loop.run_forever, name="drip-http", daemon=True)
            self._thread.start()
            self._loop = loop
        return self._loop

    def _take_inbox(self) -> None:
        """(In the loop's thread.) Starts every request handed over since the last wake-up."""
        with self._lock:
            taken, self._inbox, self._woken = self._inbox, [], False
        for answer, request in taken:
            if answer.set_running_or_notify_cancel():
                task = asyncio.ensure_future(self._exchange(*request))
                self._tasks.add(task)
                task.add_done_callback(functools.partial(self._settled, answer))

    def _settled(self, answer: Future[Response], task: asyncio.Task) -> None:
        self._tasks.discard(task)
        with self._lock:
            self._open_answers.discard(answer)
        if answer.done():
            return
        if task.cancelled():
            answer.set_exception(Unreachable("the connection was closed before the answer"))
        elif task.exception() is not None:
            answer.set_exception(task.exception())
        else:
            answer.set_result(task.result())

    async def _exchange(self, scheme: str, host: str, port: int, request: bytes) -> Response:
        key = (scheme, host, port)
        idle = self._idle.setdefault(key, [])
        connection = None
        while idle and connection is None:
            reader, writer = idle.pop()
            if _reusable(reader, writer):
                connection = (reader, writer)
            else:  # closed by the server while it waited, or holding bytes no request asked for
                writer.transport.abort()
        if connection is None:
            connection = await self._connect(scheme, host, port)
        reader, writer = connection
        loop = asyncio.get_running_loop()
        try:
            # The read timeout runs while the request is written, then again from its last byte, and starts
            # over whenever part of the answer arrives (as a socket timeout would): a slow upload or a long
            # answer arriving steadily is not cut off, an answer that stops coming is.
            async with asyncio.timeout(self.read_timeout) as deadline:
                writer.write(request)
                await writer.drain()

                def arrived() -> None:
                    deadline.reschedule(loop.time() + self.read_timeout)

                arrived()
                status, headers, content, keep = await _answer(reader, arrived)
        except BaseException as exc:
            writer.transport.abort()  # no graceful close: the connection is unusable, or the pass is ending
            if isinstance(exc, TimeoutError):
                raise Timeout(f"no answer from {host} within {self.read_timeout:g} s") from None
            if isinstance(exc, (asyncio.IncompleteReadError, ConnectionError)):
                raise Unreachable(f"the connection to {host} closed before the answer ({exc})") from None
            if isinstance(exc, ssl.SSLError):
                raise Unreachable(f"SSLError: {exc}") from None
            if isinstance(exc, (asyncio.LimitOverrunError, ValueError)):
                raise BrokenAnswer(f"{host} answered something that is not HTTP ({exc})") from None
            if isinstance(exc, OSError):
                raise Unreachable(str(exc)) from None
            raise
        if keep and len(idle) < self.size and _reusable(reader, writer):
            idle.append(connection)
        else:
            writer.transport.abort()
        return Response(status, headers, content)

    async def _connect(self, scheme: str, host: str, port: int
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new connection to host:port (through the proxy, if one is set), TLS for https."""
        tls = self.tls if scheme == "https" else None
        try:
            if self.proxy is None:
                return await asyncio.wait_for(
                    asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None,
                                            limit=_LIMIT), self.connect_timeout)
            return await asyncio.wait_for(self._tunnel(host, port, tls), self.connect_timeout)
        except TimeoutError:
            raise Timeout(f"could not connect to {host}:{port} within {self.connect_timeout:g} s") from None
        except ssl.SSLError as exc:
            raise Unreachable(f"SSLError: {exc}") from None
        except OSError as exc:
            raise Unreachable(f"cannot connect to {host}:{port}: {exc}") from None

    async def _tunnel(self, host: str, port: int, tls: ssl.SSLContext | None
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        assert self.proxy is not None
        proxy_host, proxy_port, proxy_headers = self.proxy
        try:
            reader, writer = await asyncio.open_connection(proxy_host, proxy_port, limit=_LIMIT)
        except OSError as exc:
            raise Unreachable(f"ProxyError: cannot connect to the proxy {proxy_host}:{proxy_port}: {exc}") from None
        if tls is None:  # plain http: requests go to the proxy in the absolute form
            return reader, writer
        lines = [f"CONNECT {host}:{port} HTTP/1.1", f"Host: {host}:{port}",
                 *(f"{k}: {v}" for k, v in proxy_headers.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
            writer.close()
            raise Unreachable(f"ProxyError: the proxy closed the tunnel: {exc}") from None
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        if status.split(" ")[1:2] != ["200"]:
            writer.close()
            raise Unreachable(f"ProxyError: the proxy refused the tunnel: {status}")
        await writer.start_tls(tls, server_hostname=host)
        return reader, writer

    def close(self) -> None:
        """Closes every connection and ends the loop's thread; a request still unanswered fails as
        Unreachable (the dispatcher has stopped waiting for it)."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
            inbox, self._inbox, self._woken = self._inbox, [], False
        if loop is None:
            return

        async def shut() -> None:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:  # each cancelled exchange aborts its connection and settles its Future
                await asyncio.wait(tasks, timeout=2)
            for connections in self._idle.values():
                for _reader, writer in connections:
                    writer.transport.abort()
            self._idle.clear()

        try:
            asyncio.run_coroutine_threadsafe(shut(), loop).result(timeout=5)
        except Exception:  # closing must not fail a pass
            log.debug("closing the API connections failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=5)
        if not loop.is_running():
            loop.close()
        with self._lock:
            left, self._open_answers = self._open_answers, set()
        for answer, _request in inbox:
            left.add(answer)
        for answer in left:
            if not answer.done():
                answer.set_exception(Unreachable("the transport was closed before the answer"))


@functools.lru_cache(maxsize=1)
def _trusted() -> ssl.SSLContext:
    """Certificates checked against certifi's bundle: read once per process (~30 ms), not once per pass.
    A context is safe to share between connections and threads once set up."""
    return ssl.create_default_context(cafile=ca_bundle())


def _reusable(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Whether a kept connection can carry the next request: not closed by the server, and holding no
    bytes that no request asked for (a 408 some servers send before closing an idle connection would
    otherwise be read as the next request's answer). asyncio offers no public count of what a
    StreamReader holds; without the attribute the connection is not reused."""
    held = getattr(reader, "_buffer", None)
    return held is not None and not held and not reader.at_eof() and not writer.is_closing()


async def _answer(reader: asyncio.StreamReader, arrived: Callable[[], None]
                  ) -> tuple[int, HTTPHeaderDict, bytes, bool]:
    """The answer to the request just written: status, headers, body, and whether the connection can
    carry the next request. Its body is read by Content-Length, in chunks, or to the end; `arrived` is
    called whenever part of it has come."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        arrived()
        status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise ValueError(f"status line {status_line[:80]!r}")
        status = int(rest[:3])
        if status >= 200 or status == 101:
            break  # 100 Continue and other interim answers come before the real one
    fields: list[list[str]] = []
    for line in lines:
        if line[:1] in (" ", "\t") and fields:  # an obsolete folded continuation of the field above
            fields[-1][1] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise ValueError(f"header line {line[:80]!r}")
        fields.append([name, value.strip()])
    headers = HTTPHeaderDict()
    for name, value in fields:
        headers.add(name, value)
    keep = version == "HTTP/1.1" and "close" not in headers.get("Connection", "").lower()
    if status in (101, 204, 304):
        return status, headers, b"", keep and status != 101
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        chunks = []
        while True:
            size_line = (await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip()
            if not size_line or size_line.strip(b"0123456789abcdefABCDEF"):
                raise ValueError(f"chunk size {size_line[:20]!r}")
            size = int(size_line, 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the empty line
                    arrived()
                return status, headers, b"".join(chunks), keep
            chunks.append(await _read_exactly(reader, size, arrived))
            if await reader.readexactly(2) != b"\r\n":
                raise ValueError("a chunk longer than its size")
    lengths = {part.strip() for part in headers.get("Content-Length", "").split(",") if part.strip()}
    if len(lengths) > 1 or any(not part.isdigit() for part in lengths):
        raise ValueError(f"Content-Length {headers.get('Content-Length', '')[:40]!r}")
    if lengths:
        return status, headers, await _read_exactly(reader, int(lengths.pop()), arrived), keep
    chunks = []
    while chunk := await reader.read(1 << 16):  # to the end: the server closes it
        chunks.append(chunk)
        arrived()
    return status, headers, b"".join(chunks), False


async def _read_exactly(reader: asyncio.StreamReader, size: int, arrived: Callable[[], None]) -> bytes:
    """`size` bytes, the clock restarted as each part arrives (usually all of it is there at once)."""
    parts = []
    while size > 0:
        part = await reader.read(min(size, 1 << 16))
        if not part:
            raise asyncio.IncompleteReadError(b"".join(parts), None)
        arrived()
        parts.append(part)
        size -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


# The longest header block or chunk-size line an answer may have (asyncio's default is 64 KiB).
_LIMIT = 1 << 20


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

    Requests go out concurrently: up to `concurrency` of them in flight (`?concurrency=N` in
    DRIP_EMAIL_URL), over as many keep-alive connections (`Client`), so a pass waits for one
    round trip per `concurrency` requests rather than per email. Each request is built in the
    dispatcher's thread as its emails are taken, and its answer read when its turn comes. The first
    request of a transport goes alone: a wrong key or an unreachable API shows on one request, not on
    `concurrency` of them. Results are still yielded one per email, in the order the emails were taken."""

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

    def request(self, item: OutboundEmail) -> Future[Response]:
        """Start sending one email to the provider's API (providers without a batch endpoint)."""
        raise NotImplementedError

    def request_batch(self, items: Sequence[OutboundEmail]) -> Future[Response]:
        """Start sending several emails in one request (providers with a batch endpoint)."""
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
                    pending.append((items, self._start(items)))
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
            results = self.settle(items, future)
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

    def _start(self, items: list[OutboundEmail]) -> Future[Response]:
        """The request for `items`, built here and started; a failure to start is its Future's."""
        try:
            return self._post(items)
        except TransportError as exc:  # no usable connection settings (an unusable proxy)
            failed: Future[Response] = Future()
            failed.set_exception(exc)
            return failed

    def settle(self, items: list[OutboundEmail], future: Future[Response]) -> list[SendResult]:
        """The answer to the request for `items`: one result per email, or TransportError for the
        failures that are the transport's (API unreachable, credentials refused)."""
        try:
            try:
                response = future.result()
            except Timeout:
                if not self.idempotent:
                    raise
                # The same request again, with the same Idempotency-Key: the provider answers a repeat
                # with the first outcome instead of sending twice, so this settles the doubt at once.
                response = self._post(items).result()
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

    def _post(self, items: list[OutboundEmail]) -> Future[Response]:
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
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _short(response: Response) -> str:
    return " ".join(response.text.split())[:300]
