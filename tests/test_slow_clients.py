"""Stalled clients under `drip serve` and `drip web`: requests are read whole before a thread takes them,
so clients that send part of a request and stop hold a socket each, never a worker thread."""
from __future__ import annotations

import http.client
import json
import re
import socket
import time
from urllib.parse import urlencode

import pytest
from sqlalchemy import create_engine, select
from test_concurrency import CAMPAIGN, SECRET_KEY, Drip

from service.buffered_worker import Refused, request_end
from service.core.models import Subscriber
from service.core.tokens import make_unsubscribe_token

STALLED = 50


def start(drip: Drip, command: str):
    if command == "web":
        return drip.web()
    proc = drip.start("serve", "--host", "127.0.0.1", "--port", str(drip.port))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            pytest.fail(f"drip serve exited before answering:\n{proc.output()}")
        try:
            if call(drip.port, "GET", "/healthz", timeout=2)[0] == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"drip serve did not answer:\n{proc.output()}")


def call(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 1.0) -> tuple[int, float]:
    """One request on a fresh connection; its status and how long the whole answer took."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        conn.close()


def stall(port: int, count: int) -> list[socket.socket]:
    """Half of them send headers and part of a body, the other half part of the headers; then nothing."""
    sockets = []
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 2:
            s.sendall(b"POST /signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n{\"email\": \"slow")
        else:
            s.sendall(b"POST /signup HTTP/1.1\r\nHost: x\r\nContent-Ty")
        sockets.append(s)
    return sockets


@pytest.mark.parametrize("command", ["serve", "web"])
def test_fifty_stalled_clients_do_not_freeze_signup_unsubscribe_or_health(database_url, smtp, tmp_path,
                                                                        command) -> None:
    """With 50 connections stalled mid-request, /healthz, a JSON signup and an RFC 8058 one-click
    unsubscribe each answer within a second; before, eight such clients froze every route."""
    drip = Drip(database_url, smtp.url, tmp_path)
    proc = start(drip, command)
    stalled: list[socket.socket] = []
    try:
        signup = json.dumps({"email": "ada@example.com", "campaign": CAMPAIGN}).encode()
        assert call(drip.port, "POST", "/signup", signup, {"Content-Type": "application/json"}, 10)[0] == 201
        engine = create_engine(database_url)
        with engine.connect() as conn:
            public_id = conn.execute(select(Subscriber.public_id)).scalar_one()
        engine.dispose()
        unsubscribe = f"/unsubscribe/{make_unsubscribe_token(SECRET_KEY, public_id=public_id, campaign=CAMPAIGN)}"
        one_click = (urlencode({"List-Unsubscribe": "One-Click"}).encode(),
                     {"Content-Type": "application/x-www-form-urlencoded"})
        assert call(drip.port, "GET", "/healthz", timeout=10)[0] == 200
        stalled = stall(drip.port, STALLED)
        time.sleep(0.5)  # every stalled connection accepted and waiting
        for i in range(3):  # several rounds, so every worker of `drip web` is asked
            status, took = call(drip.port, "GET", "/healthz")
            assert status == 200 and took < 1.0
            body = json.dumps({"email": f"reader{i}@example.com", "campaign": CAMPAIGN}).encode()
            status, took = call(drip.port, "POST", "/signup", body, {"Content-Type": "application/json"})
            assert status == 201 and took < 1.0
            status, took = call(drip.port, "POST", unsubscribe, *one_click)
            assert status == 200 and took < 1.0
        assert sum(1 for s in stalled if s.fileno() >= 0) == STALLED  # still held open by the clients
    finally:
        for s in stalled:
            s.close()
        proc.stop()


def test_where_a_request_ends_is_found_or_the_request_refused() -> None:
    """The buffering worker frames requests by Content-Length or chunked encoding; ambiguous framing
    (both, two lengths, another coding) and oversize bodies are refused rather than waited on."""
    head = b"POST /signup HTTP/1.1\r\nHost: x\r\n"
    assert request_end(head) is None
    assert request_end(head + b"\r\n") == len(head) + 2
    whole = head + b"Content-Length: 5\r\n\r\nhello"
    assert request_end(whole[:-1]) is None and request_end(whole + b"GET /") == len(whole)
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert request_end(chunked[:-2]) is None and request_end(chunked) == len(chunked)
    for bad, status in ((head + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
                        (head + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
                        (head + b"Content-Length: -1\r\n\r\n", 400),
                        (head + b"Transfer-Encoding: gzip\r\n\r\n", 400),
                        (head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
                        (head + b"Content-Length: 99999999999\r\n\r\n", 413),
                        (head + b"X: " + b"a" * 70000, 431)):
        with pytest.raises(Refused) as refused:
            request_end(bad)
        assert refused.value.status == status


def read_responses(sock: socket.socket, count: int) -> list[bytes]:
    """The status lines of `count` responses read off one connection (interim 1xx responses included)."""
    data, deadline = b"", time.monotonic() + 10
    while data.count(b"HTTP/1.1 ") < count and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return re.findall(rb"HTTP/1\.1 [0-9]{3} [A-Za-z ]*", data)


def test_kept_alive_pipelined_chunked_and_expect_continue_requests_are_served(database_url, smtp, tmp_path) -> None:
    """What buffering must not break: two requests pipelined in one packet, a chunked signup, and a client
    that waits for `100 Continue` before sending its body each get their answers, in order, on one connection;
    a body larger than any route takes is refused at once, without waiting for it."""
    drip = Drip(database_url, smtp.url, tmp_path)
    proc = drip.web(workers=1)
    try:
        with socket.create_connection(("127.0.0.1", drip.port), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_responses(s, 2) == [b"HTTP/1.1 200 OK"] * 2
            body = json.dumps({"email": "chunk@example.com", "campaign": CAMPAIGN}).encode()
            s.sendall(b"POST /signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
            assert read_responses(s, 1) == [b"HTTP/1.1 201 CREATED"]
            body = json.dumps({"email": "careful@example.com", "campaign": CAMPAIGN}).encode()
            s.sendall(b"POST /signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
                      + f"Content-Length: {len(body)}\r\n\r\n".encode())
            assert read_responses(s, 1) == [b"HTTP/1.1 100 Continue"]
            s.sendall(body)
            assert read_responses(s, 1) == [b"HTTP/1.1 201 CREATED"]
        with socket.create_connection(("127.0.0.1", drip.port), timeout=10) as s:  # refused before it is read
            s.sendall(b"POST /webhooks/sendgrid HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")
            assert read_responses(s, 1) == [b"HTTP/1.1 413 Content Too Large"]
        assert call(drip.port, "GET", "/healthz", timeout=10)[0] == 200
    finally:
        proc.stop()
