"""The SMTP transport against real servers: STARTTLS with AUTH, implicit TLS, one connection per pass,
bad credentials, and a server that hangs past the timeout."""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from conftest import SmtpRecorder, free_port
from tlshelp import make_cert, server_context

from service.transports import make_transport
from service.transports.base import OutboundEmail, TransportError


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("tls"))


def outbound(n: int, to: str = "reader@example.org") -> OutboundEmail:
    raw = (f"From: a@example.org\r\nTo: {to}\r\nSubject: test {n}\r\nMessage-ID: <{n}@example.org>\r\n\r\n"
           f"body {n}\r\n").encode()
    return OutboundEmail(message_pk=n, envelope_from="a@example.org", recipient=to, from_header="a@example.org",
                         to_header=to, subject=f"test {n}", text="", html="", headers=(), raw=raw)


class CountingRecorder(SmtpRecorder):
    def __init__(self) -> None:
        super().__init__()
        self.logins: list[str] = []


def authenticator(logins: list[str]):
    def check(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login == b"drip" and auth_data.password == b"s3cret pass"
        logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)
    return check


@pytest.fixture
def auth_relay(cert) -> Iterator[tuple[int, CountingRecorder]]:
    """A relay that demands STARTTLS and then AUTH (user drip, password 's3cret pass')."""
    handler = CountingRecorder()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, tls_context=server_context(cert),
                            require_starttls=True, authenticator=authenticator(handler.logins), auth_required=True)
    controller.start()
    yield port, handler
    controller.stop()


def test_starttls_auth_and_one_connection_for_the_batch(auth_relay) -> None:
    """STARTTLS upgrades, AUTH logs in (password URL-encoded), and three emails share one connection."""
    port, handler = auth_relay
    transport = make_transport(f"smtp://drip:s3cret%20pass@127.0.0.1:{port}?starttls=true&verify=false")
    results = list(transport.send([outbound(1), outbound(2), outbound(3)]))
    transport.close()
    assert [r.ok for r in results] == [True, True, True]
    assert len(handler.accepted) == 3
    assert handler.logins == ["drip"]
    assert handler.ehlos == 2  # once in clear, once after STARTTLS: one connection


def test_wrong_password_is_a_transport_error_not_a_bounce(auth_relay) -> None:
    """Bad credentials fail the transport (retry later, operator told), never the recipients."""
    port, handler = auth_relay
    transport = make_transport(f"smtp://drip:wrong@127.0.0.1:{port}?starttls=true&verify=false")
    with pytest.raises(TransportError, match="authentication"):
        list(transport.send([outbound(1)]))
    assert handler.accepted == []


def test_smtps_implicit_tls(cert) -> None:
    """smtps:// speaks TLS from the first byte."""
    ctx = server_context(cert)
    handler = SmtpRecorder()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, ssl_context=ctx)
    controller.start()
    try:
        transport = make_transport(f"smtps://127.0.0.1:{port}?verify=false")
        assert [r.ok for r in transport.send([outbound(1)])] == [True]
        transport.close()
    finally:
        controller.stop()
    assert len(handler.accepted) == 1


def test_certificate_is_verified_by_default(cert) -> None:
    """Without verify=false a self-signed certificate is refused: no mail over an unverified TLS link."""
    ctx = server_context(cert)
    port = free_port()
    controller = Controller(SmtpRecorder(), hostname="127.0.0.1", port=port, ssl_context=ctx)
    controller.start()
    try:
        with pytest.raises(TransportError):
            list(make_transport(f"smtps://127.0.0.1:{port}?timeout=5").send([outbound(1)]))
    finally:
        controller.stop()


def test_a_hanging_server_times_out() -> None:
    """A server that accepts the connection and never answers costs at most the timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    port = listener.getsockname()[1]
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    started = datetime.now(UTC)
    with pytest.raises(TransportError, match="cannot connect"):
        list(make_transport(f"smtp://127.0.0.1:{port}?timeout=1").send([outbound(1)]))
    assert (datetime.now(UTC) - started).total_seconds() < 10
    listener.close()
    for s in held:
        s.close()


def test_password_is_never_sent_without_tls() -> None:
    """A relay without TLS gets no AUTH: the transport refuses rather than send the password in clear."""
    handler = CountingRecorder()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, auth_require_tls=False,
                            authenticator=authenticator(handler.logins))
    controller.start()
    try:
        with pytest.raises(TransportError, match="TLS"):
            list(make_transport(f"smtp://drip:s3cret%20pass@127.0.0.1:{port}").send([outbound(1)]))
        assert handler.logins == []
        ok = list(make_transport(f"smtp://drip:s3cret%20pass@127.0.0.1:{port}?plain_auth=true").send([outbound(2)]))
        assert [r.ok for r in ok] == [True] and handler.logins == ["drip"]
    finally:
        controller.stop()
