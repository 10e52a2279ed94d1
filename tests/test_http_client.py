"""The provider APIs' HTTP client (service/transports/http.py, `Client`) against a raw local server that
answers exactly the bytes each test gives it: keep-alive reuse, chunked and closing answers, interim
100 answers, answers that are not HTTP, dropped connections, slow answers and unsafe header values.
Every provider transport goes through this client; the provider tests cover what they send."""
from __future__ import annotations

import base64
import socket
import ssl
import threading
import time
from datetime import timedelta

import pytest
from conftest import at, with_settings
from fakes import FakeProvider, transport_url
from sqlalchemy import select
from tlshelp import make_cert, server_context

from service.audience.signups import ConsentMeta, parse_signup, signup
from service.core.models import Message
from service.transports.http import BrokenAnswer, Client, Timeout, Unreachable

T0 = at("2026-03-02T15:00:00")


class Listener:
    """A loopback server handing each connection to `_serve` on a thread of its own; counts them."""

    def __init__(self) -> None:
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()


class RawServer(Listener):
    """Answers each request read on a connection with the next scripted bytes (None: close without
    answering; a float: wait that long first; a tuple: send its bytes, then close; a list: its bytes
    and its pauses in turn). Counts connections and requests."""

    def __init__(self, answers: list, tls: ssl.SSLContext | None = None) -> None:
        self.answers = list(answers)
        self.tls = tls
        self.requests: list[bytes] = []
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):  # the client refused our certificate
                conn.close()
                return
        with conn:
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), b"0"))
                while len(data) < length:
                    data += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + data[:length])
                data = data[length:]
                answer = self.answers.pop(0) if self.answers else None
                if isinstance(answer, float):
                    time.sleep(answer)
                    answer = self.answers.pop(0)
                if answer is None:
                    return
                if isinstance(answer, list):
                    try:
                        for piece in answer:
                            time.sleep(piece) if isinstance(piece, float) else conn.sendall(piece)
                    except OSError:  # the client gave up waiting and closed
                        return
                    continue
                conn.sendall(answer[0] if isinstance(answer, tuple) else answer)
                if isinstance(answer, tuple):
                    return

    def url(self, path: str = "/send") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def ok(body: bytes = b'{"id": "1"}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


@pytest.fixture
def client():
    made: list[Client] = []

    def make(timeout: tuple[float, float] = (2.0, 2.0)) -> Client:
        made.append(Client("http://127.0.0.1", size=4, timeout=timeout))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_one_connection_carries_every_request_and_each_answer_is_read_whole(client, monkeypatch) -> None:
    """Answers by Content-Length, in chunks (with a chunk extension and a trailer) and after an interim
    100 Continue all leave the connection usable; a JSON body arrives with its length and our headers."""
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    chunked = (b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\nX-Message-Id: abc\r\n\r\n"
               b"5;name=x\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")
    twice = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\nX-Folded: a\r\n b\r\n\r\n[]"
    server = RawServer([ok(), chunked, b"HTTP/1.1 100 Continue\r\n\r\n" + twice, ok(b"")])
    c = client()
    answers = [c.post(server.url(), json_body={"n": n}, headers={"Authorization": "Bearer k"}).result(timeout=5)
               for n in range(4)]
    server.close()
    assert [a.status_code for a in answers] == [200, 202, 200, 200]
    assert answers[0].json() == {"id": "1"} and answers[1].content == b"hello world"
    assert answers[1].headers.get("x-message-id") == "abc" and answers[2].content == b"[]"
    assert answers[2].headers.get("X-Folded") == "a b"  # an obsolete folded header, unfolded
    assert server.connections == 1 and len(server.requests) == 4
    head, _, body = server.requests[3].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /send HTTP/1.1\r\nHost: 127.0.0.1:") and b"\r\nAuthorization: Bearer k" in head
    assert body == b'{"n": 3}' and b"\r\nContent-Length: 8\r\n" in head + b"\r\n"


def test_an_answer_that_closes_or_lacks_a_length_ends_its_connection(client) -> None:
    """After an answer saying `Connection: close`, or one whose end is the connection's end (no length, as
    HTTP/1.0 may), the next request opens a new connection."""
    server = RawServer([ok(extra=b"Connection: close\r\n"), (b"HTTP/1.0 200 OK\r\n\r\nuntil the end",), ok()])
    c = client()
    first = c.post(server.url(), body=b"a").result(timeout=5)
    second = c.post(server.url(), body=b"b").result(timeout=5)
    third = c.post(server.url(), body=b"c").result(timeout=5)
    server.close()
    assert first.status_code == 200 and third.status_code == 200
    assert second.content == b"until the end"
    assert server.connections == 3


def test_bytes_left_on_a_kept_connection_are_never_taken_for_the_next_answer(client) -> None:
    """A server that sends a 408 on an idle connection before closing it (as some load balancers do), or
    more bytes than its Content-Length said: the next request goes on a new connection and gets its own
    answer."""
    closing_408 = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    server = RawServer([(ok() + closing_408,), ok(b"second") + b"garbage", ok(b"third")])
    c = client()
    answers = []
    for n in range(3):
        answers.append(c.post(server.url(), body=b"%d" % n).result(timeout=5))
        time.sleep(0.1)  # the stray bytes arrive while the connection waits
    server.close()
    assert [(a.status_code, a.content) for a in answers] == [(200, b'{"id": "1"}'), (200, b"second"),
                                                            (200, b"third")]
    assert server.connections == 3 and len(server.requests) == 3


def test_an_answer_arriving_slowly_but_steadily_is_read_and_one_that_stops_times_out(client) -> None:
    """The read timeout is a wait for the next part of the answer, not for all of it (as a socket
    timeout was): one second of a trickling body against a 0.5 s timeout is read whole."""
    trickle = [b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n", 0.3, b"a", 0.3, b"b", 0.3, b"c", 0.3, b"d"]
    server = RawServer([trickle, [b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", 1.0, b"cd"]])
    c = client(timeout=(0.5, 0.5))
    assert c.post(server.url(), body=b"x").result(timeout=5).content == b"abcd"
    with pytest.raises(Timeout, match="within 0.5 s"):
        c.post(server.url(), body=b"y").result(timeout=5)
    server.close()


def test_closing_the_client_settles_every_request_still_out(client) -> None:
    """A pass that ends (its transport closed) while requests are unanswered: each one's Future fails as
    Unreachable at once instead of leaving a caller waiting forever."""
    server = RawServer([[5.0, ok()]] * 8)
    c = client(timeout=(2.0, 30.0))
    futures = [c.post(server.url(), body=b"%d" % n) for n in range(8)]
    time.sleep(0.3)
    started = time.monotonic()
    c.close()
    for future in futures:
        with pytest.raises(Unreachable):
            future.result(timeout=5)
    assert time.monotonic() - started < 4
    server.close()


@pytest.mark.parametrize(("answers", "error", "words"), [
    ([b"SMTP ready\r\n\r\n"], BrokenAnswer, "not HTTP"),
    ([b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"], BrokenAnswer, "not HTTP"),
    ([None], Unreachable, "closed before the answer"),
    ([(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort",)], Unreachable, "closed before the answer"),
    ([1.5, ok()], Timeout, "within 0.5 s"),
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n"], BrokenAnswer,
     "chunk longer"),
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"], BrokenAnswer, "Content-Length"),
])
def test_what_is_not_an_answer_is_named(client, answers, error, words) -> None:
    server = RawServer(answers)
    c = client(timeout=(0.5, 0.5))
    with pytest.raises(error, match=words):
        c.post(server.url(), body=b"x").result(timeout=5)
    server.close()


def test_a_refused_connection_is_unreachable(client) -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(Unreachable, match=f"cannot connect to 127.0.0.1:{port}"):
        client().post(f"http://127.0.0.1:{port}/send", body=b"x").result(timeout=5)


def test_an_api_key_with_a_line_break_sends_nothing_and_every_email_waits(runtime) -> None:
    """A key whose percent-encoding hides a line break (%0D%0A) would add a header of the sender's choosing
    to every request: nothing is sent, the readers' emails wait with the reason, no attempt counted."""
    fake = FakeProvider("sendgrid")
    try:
        url = transport_url("sendgrid", fake).replace("sendgrid://SG.key@", "sendgrid://SG.key%0D%0AX-Evil:%201@")
        assert "%0D%0A" in url
        rt = with_settings(runtime, email_url=url)
        for address in ("ada@example.com", "bo@example.com"):
            data = parse_signup({"email": address}, campaigns=rt.campaigns,
                                default_campaign=rt.settings.default_campaign)
            with rt.sessions() as s, s.begin():
                signup(s, data, campaign=rt.campaigns[data.campaign], meta=ConsentMeta("json"), now=T0)
        assert rt.dispatcher().run_pass(T0).deferred == 2
        with rt.sessions() as s:
            messages = s.scalars(select(Message)).all()
            assert all(m.attempts == 0 and "line break" in m.last_error and "X-Evil" not in m.last_error
                       for m in messages)
        assert not fake.posts()
        good = with_settings(runtime, email_url=transport_url("sendgrid", fake))
        assert good.dispatcher().run_pass(T0 + timedelta(hours=1)).sent == 2
    finally:
        fake.close()


class ConnectProxy(Listener):
    """An HTTP proxy that only tunnels: it reads a CONNECT request, answers 200 and relays bytes both ways."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096)
        self.seen.append(head)
        host, _, port = head.split(b" ")[1].decode().rpartition(":")
        upstream = socket.create_connection((host, int(port)))
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

        def pipe(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                b.close()

        threading.Thread(target=pipe, args=(upstream, conn), daemon=True).start()
        pipe(conn, upstream)


def test_https_checks_the_certificate_and_keeps_its_connection_even_through_a_proxy(tmp_path, monkeypatch) -> None:
    """The production path: TLS to the API. A certificate the trusted bundle does not vouch for is refused
    (Unreachable, nothing sent); one it trusts carries several requests over one connection, directly and
    through an HTTP proxy's CONNECT tunnel with the proxy's password in Proxy-Authorization."""
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
                 "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    cert = make_cert(tmp_path)
    trusted = ssl.create_default_context(cafile=str(cert[0]))
    server = RawServer([ok(b"%d" % n) for n in range(6)], tls=server_context(cert))
    url = f"https://127.0.0.1:{server.port}/send"
    stranger = Client(url, size=2, timeout=(2.0, 2.0))  # the certifi bundle, as in production
    with pytest.raises(Unreachable, match="SSLError.*CERTIFICATE_VERIFY_FAILED"):
        stranger.post(url, body=b"x").result(timeout=5)
    stranger.close()
    assert not server.requests

    direct = Client(url, size=2, timeout=(2.0, 2.0))
    direct.tls = trusted
    assert [direct.post(url, body=b"x").result(timeout=5).content for _ in range(3)] == [b"0", b"1", b"2"]
    direct.close()

    proxy = ConnectProxy()
    monkeypatch.setenv("HTTPS_PROXY", f"http://relay:s3cret@127.0.0.1:{proxy.port}")
    tunnelled = Client(url, size=2, timeout=(2.0, 2.0))
    tunnelled.tls = trusted
    assert [tunnelled.post(url, body=b"y").result(timeout=5).content for _ in range(3)] == [b"3", b"4", b"5"]
    tunnelled.close()
    proxy.close()
    server.close()
    assert server.connections == 3  # the refused one, one direct, one through the tunnel
    [connect] = proxy.seen
    assert connect.startswith(f"CONNECT 127.0.0.1:{server.port} HTTP/1.1\r\n".encode())
    assert b"proxy-authorization: basic " + base64.b64encode(b"relay:s3cret").lower() in connect.lower()
    assert all(b"s3cret" not in r for r in server.requests)


def test_form_data_parses_back_and_refuses_names_it_cannot_write() -> None:
    """The multipart form the Mailgun transport posts, read back by the email package's parser: text and
    file fields whole, bytes untouched (a body with CRLFs and a dashed line); a quote or line break in a
    field or file name is refused rather than written into the part's header."""
    import email
    import email.policy

    from service.transports.http import form_data

    message = b"Subject: hi\r\n\r\n--not-a-boundary\r\nline two\r\n"
    body, content_type = form_data({"to": "zoe@example.com", "message": ("message.eml", message, "text/plain")})
    form = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body,
                                    policy=email.policy.HTTP)
    to, attached = form.iter_parts()
    assert to.get_param("name", header="content-disposition") == "to" and to.get_content() == "zoe@example.com"
    assert attached.get_filename() == "message.eml" and attached.get_payload(decode=True) == message
    for bad in ({'na"me': "x"}, {"name\r\nX-Injected: 1": "x"}, {"file": ('a"b.eml', b"", "text/plain")}):
        with pytest.raises(ValueError, match="quote or line break"):
            form_data(bad)
