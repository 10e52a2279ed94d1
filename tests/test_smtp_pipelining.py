"""RFC 2920 pipelining in the SMTP transport: used when the server announces it, and every recipient
still gets its own result (accepted, deferred, bounced, policy-refused, connection closed)."""
from __future__ import annotations

import pytest
from aiosmtpd.controller import Controller
from conftest import SmtpRecorder, free_port

from service.transports import make_transport
from service.transports.base import OutboundEmail


class PipeliningRecorder(SmtpRecorder):
    """aiosmtpd reads commands one by one from its buffer, so it serves pipelined clients; it only needs
    to say so in its EHLO answer. Each EHLO is counted, to see reconnections."""

    def __init__(self) -> None:
        super().__init__()
        self.ehlos = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: ANN001, ANN201, N802
        self.ehlos += 1
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]


@pytest.fixture
def server():  # noqa: ANN201
    handler, port = PipeliningRecorder(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=10)
    controller.start()
    yield handler, port
    controller.stop()


def outbound(n: int, to: str) -> OutboundEmail:
    raw = (f"From: a@example.org\r\nTo: {to}\r\nSubject: test {n}\r\n\r\n.leading dot line {n}\r\n.\r\n"
           f"body {n}\r\n").encode()
    return OutboundEmail(message_pk=n, envelope_from="a@example.org", recipient=to, from_header="a@example.org",
                         to_header=to, subject=f"test {n}", text="", html="", headers=(), raw=raw)


def test_pipelined_batch_keeps_per_recipient_results(server) -> None:  # noqa: ANN001
    """Scripted refusals land on the right email; the rest are delivered intact (dot-stuffing undone)."""
    handler, port = server
    handler.script("soft@example.org", "DATA", "451 4.3.0 try later")
    handler.script("gone@example.org", "RCPT", "550 5.1.1 no such user")
    handler.script("policy@example.org", "DATA", "554 5.7.1 rejected by policy")
    handler.script("bye@example.org", "DATA", "421 4.7.0 closing")
    rcpts = ["ok1@example.org", "soft@example.org", "gone@example.org", "policy@example.org", "ok2@example.org",
             "bye@example.org", "ok3@example.org"]
    transport = make_transport(f"smtp://127.0.0.1:{port}?timeout=5")
    results = list(transport.send([outbound(i, r) for i, r in enumerate(rcpts)]))
    assert transport._conn is not None and transport._conn.has_extn("pipelining")  # the pipelined path ran
    transport.close()
    got = {r: (res.ok, res.permanent, res.suppress, res.code) for r, res in zip(rcpts, results, strict=True)}
    assert got == {
        "ok1@example.org": (True, False, False, 250),
        "soft@example.org": (False, False, False, 451),
        "gone@example.org": (False, True, True, 550),
        "policy@example.org": (False, True, False, 554),
        "ok2@example.org": (True, False, False, 250),
        "bye@example.org": (False, False, False, 421),
        "ok3@example.org": (True, False, False, 250),
    }
    accepted = {rcpt[0]: raw for _f, rcpt, raw in handler.accepted}
    assert set(accepted) == {"ok1@example.org", "ok2@example.org", "ok3@example.org"}
    assert accepted["ok2@example.org"].endswith(b"\r\n.leading dot line 4\r\n.\r\nbody 4\r\n")
    assert handler.ehlos == 2  # one connection, plus one after the 421 closed it


def test_pipelining_can_be_switched_off(server) -> None:  # noqa: ANN001
    """`?pipelining=false` falls back to smtplib's one-command-at-a-time dialogue, with the same results."""
    handler, port = server
    handler.script("gone@example.org", "RCPT", "550 5.1.1 no such user")
    transport = make_transport(f"smtp://127.0.0.1:{port}?timeout=5&pipelining=false")
    assert transport.config.pipelining is False
    results = list(transport.send([outbound(1, "gone@example.org"), outbound(2, "ok@example.org")]))
    transport.close()
    assert [(r.ok, r.code) for r in results] == [(False, 550), (True, 250)]
