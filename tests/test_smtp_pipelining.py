"""RFC 2920 pipelining in the SMTP transport: one round trip per email when the server announces it, the
same bytes delivered and the same result for every email as smtplib's one-command-at-a-time dialogue
(refusals at MAIL, RCPT, DATA and end of data, 421, a dropped connection), and the batch still taken
lazily. Real servers on loopback: aiosmtpd (the conftest recorder) and a raw socket server that keeps
the bytes it is sent and counts the client's round trips."""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import asdict

import pytest
from aiosmtpd.controller import Controller
from conftest import SmtpRecorder, free_port

from service.transports import make_transport
from service.transports.base import OutboundEmail, SendResult

# Lines that a careless dot-stuffing or final CRLF would change.
AWKWARD = [
    b"plain body\r\n",
    b".leading dot\r\n.\r\n..two dots\r\nmiddle . dot\r\n.",
    b"no final line break",
    b"",
    b".",
    b"ends with a lone dot line\r\n.\r\n",
    b"bare\nline\nfeeds\n.dot after LF\n",
]


def outbound(n: int, to: str = "", body: bytes = b"") -> OutboundEmail:
    to = to or f"reader{n}@example.org"
    raw = f"From: a@example.org\r\nTo: {to}\r\nSubject: test {n}\r\n\r\n".encode() + (body or f"body {n}\r\n".encode())
    return OutboundEmail(message_pk=n, envelope_from="a@example.org", recipient=to, from_header="a@example.org",
                         to_header=to, subject=f"test {n}", text="", html="", headers=(), raw=raw)


@pytest.fixture
def recorder() -> Iterator[tuple[SmtpRecorder, int]]:
    handler, port = SmtpRecorder(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=10)
    controller.start()
    yield handler, port
    controller.stop()


class WireServer:
    """A raw SMTP server that keeps what it is sent, byte for byte, and counts the client's round trips:
    a read after which the server had something to answer is one turn of the dialogue.

    `script[(stage, n)]` replaces the reply at MAIL, RCPT, DATA or EOD (end of data) of the n-th mail
    transaction (1-based, over all connections); the reply "DROP" closes the connection instead."""

    def __init__(self, *, pipelining: bool = True) -> None:
        self.pipelining = pipelining
        self.script: dict[tuple[str, int], bytes] = {}
        self.lines: list[bytes] = []  # every command line, in order
        self.payloads: dict[int, bytes] = {}  # transaction -> content as on the wire (dot-stuffed, final dot)
        self.accepted: list[int] = []  # transactions answered 250 at end of data
        self.recipients: dict[int, str] = {}  # transaction -> its RCPT address
        self.turns = 0
        self.connections = 0
        self.transactions = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.url = f"smtp://127.0.0.1:{self.port}?timeout=5"
        self.threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _reply(self, stage: str, default: bytes) -> bytes:
        return self.script.get((stage, self.transactions), default)

    def _serve(self, conn: socket.socket) -> None:
        conn.sendall(b"220 wire ready\r\n")
        buf, in_data, rcpt_ok, mail_ok = b"", False, False, False
        with conn:
            while chunk := conn.recv(65536):
                buf += chunk
                out: list[bytes] = []
                while True:
                    if in_data:
                        end = (b"\r\n" + buf).find(b"\r\n.\r\n")
                        if end < 0:
                            break
                        self.payloads[self.transactions], buf = buf[:end + 3], buf[end + 3:]
                        in_data = False
                        reply = self._reply("EOD", b"250 2.0.0 queued" if rcpt_ok else b"554 5.5.1 no recipients")
                        if reply.startswith(b"250"):
                            self.accepted.append(self.transactions)
                    else:
                        line, sep, rest = buf.partition(b"\r\n")
                        if not sep:
                            break
                        buf = rest
                        self.lines.append(line)
                        reply, in_data, mail_ok, rcpt_ok = self._command(line, in_data, mail_ok, rcpt_ok)
                    if reply == b"DROP":
                        conn.sendall(b"".join(out))
                        conn.shutdown(socket.SHUT_RDWR)
                        return
                    out.append(reply + b"\r\n")
                    if reply.startswith(b"221"):
                        conn.sendall(b"".join(out))
                        return
                if out:
                    self.turns += 1
                    conn.sendall(b"".join(out))

    def _command(self, line: bytes, in_data: bool, mail_ok: bool, rcpt_ok: bool) -> tuple[bytes, bool, bool, bool]:
        verb = line[:4].upper()
        if verb == b"EHLO":
            extensions = b"250-PIPELINING\r\n" if self.pipelining else b""
            return b"250-wire\r\n" + extensions + b"250 SIZE 1000000", in_data, False, False
        if verb == b"MAIL":
            self.transactions += 1
            reply = self._reply("MAIL", b"250 ok")
            return reply, in_data, reply.startswith(b"250"), False
        if verb == b"RCPT":
            self.recipients[self.transactions] = line.decode().partition("<")[2].rstrip(">")
            reply = self._reply("RCPT", b"250 ok") if mail_ok else b"503 5.5.1 need MAIL"
            return reply, in_data, mail_ok, reply.startswith(b"25")
        if verb == b"DATA":
            reply = self._reply("DATA", b"354 go ahead" if rcpt_ok else b"554 5.5.1 no valid recipients")
            return reply, reply.startswith(b"354"), mail_ok, rcpt_ok
        if verb == b"RSET":
            return b"250 reset", in_data, False, False
        if verb == b"QUIT":
            return b"221 bye", in_data, mail_ok, rcpt_ok
        return b"250 ok", in_data, mail_ok, rcpt_ok

    def close(self) -> None:
        self.sock.close()
        for t in self.threads:
            t.join(5)


@pytest.fixture
def wire() -> Iterator[WireServer]:
    server = WireServer()
    yield server
    server.close()


def send_all(url: str, items: list[OutboundEmail]) -> list[SendResult]:
    transport = make_transport(url)
    try:
        return list(transport.send(iter(items)))
    finally:
        transport.close()


def summary(results: list[SendResult]) -> list[tuple]:
    return [(r.ok, r.permanent, r.suppress, r.transport, r.code) for r in results]


def test_pipelined_bytes_are_smtplibs_bytes(wire: WireServer) -> None:
    """Commands and content on the wire, dot-stuffing and final CRLF included, are exactly what smtplib
    writes; pipelining changes only when they are written."""
    items = [outbound(i, body=body) for i, body in enumerate(AWKWARD)]
    assert all(r.ok for r in send_all(wire.url, items))
    pipelined_lines, pipelined_payloads = list(wire.lines), dict(wire.payloads)
    wire.lines.clear()
    wire.payloads.clear()
    wire.transactions = 0
    assert all(r.ok for r in send_all(wire.url + "&pipelining=false", items))
    assert pipelined_payloads == wire.payloads and len(wire.payloads) == len(AWKWARD)
    assert pipelined_lines == wire.lines
    assert wire.lines[1].startswith(b"mail FROM:<a@example.org> size=")  # SIZE announced: smtplib's option kept


def test_delivered_messages_are_identical_with_and_without_pipelining(recorder) -> None:
    """aiosmtpd stores the same messages (dot-stuffing undone) whichever way they were sent."""
    handler, port = recorder
    items = [outbound(i, body=body) for i, body in enumerate(AWKWARD)]
    assert all(r.ok for r in send_all(f"smtp://127.0.0.1:{port}?timeout=5", items))
    pipelined = list(handler.accepted)
    handler.accepted.clear()
    handler.pipelining = False
    assert all(r.ok for r in send_all(f"smtp://127.0.0.1:{port}?timeout=5", items))
    assert pipelined == handler.accepted and len(pipelined) == len(AWKWARD)
    assert pipelined[1][2].endswith(b"\r\n.leading dot\r\n.\r\n..two dots\r\nmiddle . dot\r\n.\r\n")


def test_one_round_trip_per_email(wire: WireServer) -> None:
    """Pipelined, each email costs one turn of the dialogue (its content with the next envelope); smtplib
    needs four (MAIL, RCPT, DATA, content), each waiting for the server's answer."""
    n = 40
    assert all(r.ok for r in send_all(wire.url, [outbound(i) for i in range(n)]))
    pipelined = wire.turns
    plain = WireServer(pipelining=False)
    try:
        assert all(r.ok for r in send_all(plain.url, [outbound(i) for i in range(n)]))
    finally:
        plain.close()
    assert plain.turns >= 4 * n  # every command waited for its reply
    # greeting, (EHLO), first envelope, n contents, QUIT; a read split by the kernel may add a turn
    assert pipelined <= 1.25 * n + 4, (pipelined, plain.turns)
    assert wire.connections == 1 and len(wire.accepted) == n


def test_many_emails_over_one_connection(recorder) -> None:
    """A long batch goes over one connection, every email delivered once, in order."""
    handler, port = recorder
    items = [outbound(i) for i in range(200)]
    results = send_all(f"smtp://127.0.0.1:{port}?timeout=5", items)
    assert [r.ok for r in results] == [True] * 200
    assert [rcpts for _f, rcpts, _raw in handler.accepted] == [[item.recipient] for item in items]
    assert handler.ehlos == 1


SCRIPTS = [  # (recipient, stage, reply) -> the result expected, the same with and without pipelining
    ("gone@example.org", "RCPT", "550 5.1.1 no such user"),
    ("busy@example.org", "RCPT", "450 4.2.1 mailbox busy"),
    ("relay@example.org", "RCPT", "554 5.7.1 relay access denied"),
    ("bare@example.org", "RCPT", "550 no such user here"),
    ("soft@example.org", "DATA", "451 4.3.0 try later"),
    ("policy@example.org", "DATA", "554 5.7.1 rejected by policy"),
    ("full@example.org", "DATA", "552 5.2.2 mailbox full"),
    ("big@example.org", "DATA", "552 5.3.4 message too big"),
    ("byercpt@example.org", "RCPT", "421 4.7.0 closing"),
    ("byedata@example.org", "DATA", "421 4.3.2 shutting down"),
]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "smtplib"])
def test_refusals_mid_batch_keep_per_email_results(recorder, pipelining: bool) -> None:
    """Each scripted refusal lands on its own email and is classified as before (5.1.1 and a bare 550 at
    RCPT suppress, 5.2.2 suppresses, 4xx and policy refusals do not); the emails after it are delivered;
    a 421 drops the connection and the next email reconnects."""
    handler, port = recorder
    handler.pipelining = pipelining
    items = []
    for i, (rcpt, stage, reply) in enumerate(SCRIPTS):
        handler.script(rcpt, stage, reply)
        items += [outbound(2 * i, rcpt), outbound(2 * i + 1)]
    results = send_all(f"smtp://127.0.0.1:{port}?timeout=5", items)
    got = {item.recipient: (r.ok, r.permanent, r.suppress, r.transport, r.code) for item, r in zip(items, results,
                                                                                                  strict=True)}
    assert {rcpt: got.pop(rcpt) for rcpt, _s, _r in SCRIPTS} == {
        "gone@example.org": (False, True, True, False, 550),
        "busy@example.org": (False, False, False, False, 450),
        "relay@example.org": (False, True, False, False, 554),
        "bare@example.org": (False, True, True, False, 550),
        "soft@example.org": (False, False, False, False, 451),
        "policy@example.org": (False, True, False, False, 554),
        "full@example.org": (False, True, True, False, 552),
        "big@example.org": (False, True, False, False, 552),
        "byercpt@example.org": (False, False, False, False, 421),
        "byedata@example.org": (False, False, False, False, 421),
    }
    assert set(got.values()) == {(True, False, False, False, 250)}  # every other email delivered
    assert sorted(r for _f, (r,), _raw in handler.accepted) == sorted(got)
    assert handler.ehlos == 3  # one connection, and one more after each 421


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "smtplib"])
def test_our_sender_refused_is_a_transport_fault(recorder, pipelining: bool) -> None:
    """MAIL refused is our configuration's fault, not the reader's: a transport result, the connection
    dropped (the RCPT/DATA replies of its group ignored), and the next email sent on a new one."""
    handler, port = recorder
    handler.pipelining = pipelining
    handler.script("", "MAIL", "553 5.7.1 sender not allowed")
    results = send_all(f"smtp://127.0.0.1:{port}?timeout=5", [outbound(1), outbound(2), outbound(3)])
    assert summary(results) == [(False, False, False, True, 553), (True, False, False, False, 250),
                                (True, False, False, False, 250)]
    assert "sender a@example.org refused: 553 5.7.1 sender not allowed" in results[0].error
    assert [r for _f, (r,), _raw in handler.accepted] == ["reader2@example.org", "reader3@example.org"]
    assert handler.ehlos == 2


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "smtplib"])
def test_message_over_the_size_limit(pipelining: bool) -> None:
    """A message over the announced SIZE is refused at MAIL (smtplib declares the size there) with the same
    result as before: the transport's fault, the next email delivered on a new connection."""
    handler, port = SmtpRecorder(pipelining=pipelining), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=10, data_size_limit=2000)
    controller.start()
    try:
        results = send_all(f"smtp://127.0.0.1:{port}?timeout=5",
                           [outbound(1), outbound(2, body=b"x" * 3000 + b"\r\n"), outbound(3)])
    finally:
        controller.stop()
    assert summary(results) == [(True, False, False, False, 250), (False, False, False, True, 552),
                                (True, False, False, False, 250)]
    assert len(handler.accepted) == 2


def test_data_command_refused_then_rset(wire: WireServer) -> None:
    """A DATA command refused (not the content) fails that email as before and is followed by RSET; a DATA
    accepted although the recipient was refused gets an empty message (a lone dot), as RFC 2920 asks; the
    next emails go through on the same connection."""
    wire.script[("DATA", 1)] = b"451 4.3.0 not now"
    wire.script[("RCPT", 3)] = b"550 5.1.1 unknown"
    wire.script[("DATA", 3)] = b"354 go ahead anyway"
    results = send_all(wire.url, [outbound(i) for i in range(1, 5)])
    assert summary(results) == [(False, False, False, False, 451), (True, False, False, False, 250),
                                (False, True, True, False, 550), (True, False, False, False, 250)]
    assert wire.accepted == [2, 4] and wire.payloads[3] == b".\r\n" and wire.connections == 1
    verbs = [line.split()[0].lower().decode() for line in wire.lines]
    assert verbs == ["ehlo", "mail", "rcpt", "data", "rset", "mail", "rcpt", "data", "mail", "rcpt", "data",
                     "mail", "rcpt", "data", "quit"]


@pytest.mark.parametrize("stage", ["EOD", "MAIL", "DATA"])
def test_server_drops_the_connection_mid_pipeline(wire: WireServer, stage: str) -> None:
    """The server hangs up in the middle of the pipeline: at the end of email 2's content (its envelope and
    email 3's already written), or before answering email 3's MAIL or DATA. Every email pulled gets a
    result, none is reported sent unless the server said 250 for it, and the rest go out on a new
    connection."""
    target = 2 if stage == "EOD" else 3
    wire.script[(stage, target)] = b"DROP"
    items = [outbound(i) for i in range(1, 6)]
    results = send_all(wire.url, items)
    assert len(results) == len(items)
    assert [r.ok for r in results] == [i != target for i in range(1, 6)]
    lost = results[target - 1]
    assert not lost.permanent and not lost.transport and lost.error.startswith("connection lost")
    assert {wire.recipients[t] for t in wire.accepted} == {item.recipient for item, r in zip(items, results,
                                                                                             strict=True) if r.ok}
    assert wire.connections == 2


def test_a_lazy_feed_is_taken_two_emails_ahead_at_most(recorder) -> None:
    """The batch is pulled two emails ahead of the results at most (the next envelope travels with the
    current content, the one after is composed while the server takes that content in), never counted,
    and a feed that stops early ends the batch with one result each."""
    handler, port = recorder
    pulled: list[int] = []

    def feed() -> Iterator[OutboundEmail]:
        for i in range(1, 100):
            if i == 6:
                return  # the rest became unwanted while sending (the dispatcher's re-check)
            pulled.append(i)
            yield outbound(i)

    transport = make_transport(f"smtp://127.0.0.1:{port}?timeout=5")
    seen = []
    for n, result in enumerate(transport.send(feed()), start=1):
        assert result.ok
        seen.append(len(pulled))
        assert len(pulled) <= n + 2
    transport.close()
    assert len(seen) == 5 and len(handler.accepted) == 5


def test_a_feed_failing_while_taken_early_fails_after_the_answer_in_progress(recorder) -> None:
    """The feed fails (a database error in the dispatcher's re-check) while the email after the next is
    taken early: the answer to the email the server is taking in is still read and returned, then the
    failure is raised; the announced next email gets no content, and the next batch goes out."""
    handler, port = recorder

    def feed() -> Iterator[OutboundEmail]:
        yield outbound(1)
        yield outbound(2)
        raise RuntimeError("database went away")

    transport = make_transport(f"smtp://127.0.0.1:{port}?timeout=5")
    results = transport.send(feed())
    assert next(results).ok
    with pytest.raises(RuntimeError, match="database went away"):
        next(results)
    assert [r.ok for r in transport.send(iter([outbound(4)]))] == [True]
    transport.close()
    assert [r for _f, (r,), _raw in handler.accepted] == ["reader1@example.org", "reader4@example.org"]


def test_abandoned_batch_sends_nothing_more(recorder) -> None:
    """A caller that stops reading results after the first leaves the email already announced (its
    envelope written) unsent: that connection is dropped, and the transport still serves the next batch."""
    handler, port = recorder
    transport = make_transport(f"smtp://127.0.0.1:{port}?timeout=5")
    results = transport.send(iter([outbound(1), outbound(2), outbound(3)]))
    assert next(results).ok
    results.close()
    assert [r.ok for r in transport.send(iter([outbound(4)]))] == [True]
    transport.close()
    assert [r for _f, (r,), _raw in handler.accepted] == ["reader1@example.org", "reader4@example.org"]
    assert handler.ehlos == 2


def test_without_pipelining_smtplib_is_used(recorder) -> None:
    """A server that does not announce PIPELINING (or `?pipelining=false`) gets smtplib's dialogue, with
    the same results."""
    handler, port = recorder
    handler.pipelining = False
    handler.script("gone@example.org", "RCPT", "550 5.1.1 no such user")
    results = send_all(f"smtp://127.0.0.1:{port}?timeout=5", [outbound(1, "gone@example.org"), outbound(2)])
    assert summary(results) == [(False, True, True, False, 550), (True, False, False, False, 250)]
    assert make_transport(f"smtp://127.0.0.1:{port}?pipelining=false").config.pipelining is False
    assert asdict(results[1]) == asdict(SendResult(ok=True, code=250))
