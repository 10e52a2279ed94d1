"""The gunicorn worker of `drip web` and `drip serve`: gunicorn's threaded worker, except that a request is
read whole, in the worker's event loop, before a thread takes it.

gunicorn's own threaded worker hands a connection to a thread as soon as its first bytes arrive; the
thread then blocks reading the rest. A client that sends headers and part of a body and then stalls
holds that thread for as long as it keeps the socket open, and a handful of such clients (one per
thread) freeze every route, signups and one-click unsubscribes included. Here the event loop reads
each connection's bytes as they come, without a thread, and only a complete request (its head and
its whole body) goes to the thread pool: the same thing nginx's request buffering does in front of
an application server. A stalled request costs one socket and its buffer until `REQUEST_SECONDS`,
never a thread.

The reading side checks only what it must to know where a request ends (Content-Length or chunked
framing), and refuses what it cannot frame with certainty: both Content-Length and Transfer-Encoding,
conflicting lengths, a transfer coding other than chunked. Everything else (the request line, header
syntax, limits) is left to gunicorn's parser, which then reads from the buffer and never waits.
"""
from __future__ import annotations

import errno
import re
import selectors
import time
from collections import deque
from functools import partial

from gunicorn.workers.gthread import TConn, ThreadWorker

REQUEST_SECONDS = 30.0  # a whole request, head and body, must arrive within this (nginx: 60 s per read)
MAX_HEAD_BYTES = 64 * 1024  # request line and headers; gunicorn's own field limits apply after this
MAX_BODY_BYTES = 5 * 1024 * 1024 + 64 * 1024  # the largest body a route takes (provider webhook batches)
# Bytes of unfinished requests one worker holds at once; past it a connection adding more gets 503, so a
# crowd of clients each sending a large body slowly cannot exhaust the worker's memory.
MAX_BUFFERED_BYTES = 128 * 1024 * 1024
_READ_CHUNK = 64 * 1024
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,12}")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,8}")


class Refused(Exception):
    """The request cannot be framed or is too large: answer with `status` and close."""

    REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large",
               431: "Request Header Fields Too Large", 503: "Service Unavailable"}

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status

    def response(self) -> bytes:
        reason = self.REASONS[self.status]
        body = f"{self.status} {reason}\n".encode()
        return (f"HTTP/1.1 {self.status} {reason}\r\nConnection: close\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def request_end(buf: bytes | bytearray, *, max_body: int = MAX_BODY_BYTES) -> int | None:
    """Where the first request in `buf` ends (an offset), or None while it is incomplete; raises Refused."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        if len(buf) > MAX_HEAD_BYTES:
            raise Refused(431)
        return None
    if head_end > MAX_HEAD_BYTES:
        raise Refused(431)
    lengths, codings = set(), []
    for line in bytes(buf[:head_end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length":
            if not _CONTENT_LENGTH.fullmatch(value):
                raise Refused(400)
            lengths.add(int(value))
        elif name == b"transfer-encoding":
            codings += [c.strip().lower() for c in value.split(b",")]
    body_start = head_end + 4
    if codings:
        if lengths or codings[-1] != b"chunked":
            raise Refused(400)
        return _chunked_end(buf, body_start, max_body)
    if len(lengths) > 1:
        raise Refused(400)
    length = lengths.pop() if lengths else 0
    if length > max_body:
        raise Refused(413)
    return body_start + length if len(buf) >= body_start + length else None


def _chunked_end(buf: bytes | bytearray, pos: int, max_body: int) -> int | None:
    total = 0
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            if len(buf) - pos > 1024:
                raise Refused(400)
            return None
        size_text = bytes(buf[pos:line_end]).split(b";")[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise Refused(400)
        size = int(size_text, 16)
        total += size
        if total > max_body:
            raise Refused(413)
        if size == 0:  # trailer fields, then an empty line
            if buf[line_end + 2:line_end + 4] == b"\r\n":
                return line_end + 4
            trailers_end = buf.find(b"\r\n\r\n", line_end)
            if trailers_end < 0:
                if len(buf) - line_end > MAX_HEAD_BYTES:
                    raise Refused(431)
                return None
            return trailers_end + 4
        data_end = line_end + 2 + size
        if len(buf) < data_end + 2:
            return None
        if buf[data_end:data_end + 2] != b"\r\n":
            raise Refused(400)
        pos = data_end + 2


def _expects_continue(head: bytes) -> bool:
    return any(line.partition(b":")[0].strip().lower() == b"expect"
               and line.partition(b":")[2].strip().lower() == b"100-continue" for line in head.split(b"\r\n")[1:])


def _without_expect(request: bytes) -> bytes:
    """The request minus its Expect header, once this worker has sent the 100 Continue itself (gunicorn's
    parser would otherwise send a second one after the body)."""
    head_end = request.find(b"\r\n\r\n")
    lines = request[:head_end].split(b"\r\n")
    kept = [lines[0]] + [ln for ln in lines[1:] if ln.partition(b":")[0].strip().lower() != b"expect"]
    return b"\r\n".join(kept) + request[head_end:]


class BufferingThreadWorker(ThreadWorker):
    """gunicorn's gthread worker with request buffering in its event loop (see the module docstring)."""

    @classmethod
    def check_config(cls, cfg, log) -> None:
        # The buffer holds bytes as they come off the socket: TLS records, were gunicorn to terminate TLS.
        # Drip leaves TLS to the reverse proxy in front of it.
        if cfg.is_ssl:
            raise RuntimeError("the buffering worker serves plain HTTP; terminate TLS in a reverse proxy")
        super().check_config(cfg, log)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reading: deque[TConn] = deque()  # connections whose request is still arriving, oldest first
        self.buffered = 0  # bytes held in their buffers

    # -- connections arrive: new ones, and kept-alive ones with a next request --------------------------
    def accept(self, listener) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self._start_reading(TConn(self.cfg, client_sock, client_addr, listener.getsockname()), b"")

    def on_client_socket_readable(self, conn, client) -> None:
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._start_reading(conn, b"")

    def _start_reading(self, conn, leftover: bytes) -> None:
        conn.sock.setblocking(False)
        conn.drip_buffer = bytearray(leftover)
        self.buffered += len(leftover)
        conn.drip_continued = False
        conn.drip_deadline = time.monotonic() + REQUEST_SECONDS
        conn.drip_reading = True
        self.reading.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_bytes, conn))
        if leftover:  # a pipelined request may already be whole
            self._check(conn)

    def _on_bytes(self, conn, _client) -> None:
        try:
            self._read_more(conn)
        except Exception:  # in the event loop an uncaught error would end the worker and every connection
            self.log.exception("dropping a connection after an error reading its request")
            self._stop_reading(conn)
            self._close(conn)

    def _read_more(self, conn) -> None:
        try:
            data = conn.sock.recv(_READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away before finishing its request
            self._stop_reading(conn)
            self._close(conn)
            return
        conn.drip_buffer += data
        self.buffered += len(data)
        self._check(conn)

    def _check(self, conn) -> None:
        try:
            if self.buffered > MAX_BUFFERED_BYTES:
                raise Refused(503)
            end = request_end(conn.drip_buffer)
        except Refused as refused:
            self._stop_reading(conn)
            self._refuse(conn, refused)
            return
        if end is None:
            head_end = conn.drip_buffer.find(b"\r\n\r\n")
            if head_end >= 0 and not conn.drip_continued and _expects_continue(bytes(conn.drip_buffer[:head_end])):
                conn.drip_continued = True  # the client waits for this before it sends the body
                self._send_quietly(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        self._stop_reading(conn)
        request = bytes(conn.drip_buffer[:end])
        conn.drip_request = _without_expect(request) if conn.drip_continued else request
        conn.drip_leftover = bytes(conn.drip_buffer[end:])
        conn.drip_buffer = bytearray()  # after _stop_reading counted it out
        conn.data_ready = True
        self.enqueue_req(conn)

    def _stop_reading(self, conn) -> None:
        if not getattr(conn, "drip_reading", False):
            return
        conn.drip_reading = False
        self.buffered -= len(conn.drip_buffer)
        self.reading.remove(conn)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _send_quietly(self, conn, data: bytes) -> None:
        try:
            conn.sock.send(data)
        except OSError:
            pass

    def _refuse(self, conn, refused: Refused) -> None:
        self._send_quietly(conn, refused.response())
        self._close(conn)

    def _close(self, conn) -> None:
        if getattr(conn, "drip_closed", False):
            return
        conn.drip_closed = True
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Also closes connections whose request did not arrive whole within REQUEST_SECONDS, and, once the
        worker is stopping, those that have not sent a byte of their next request yet."""
        super().murder_pending()
        now = time.monotonic()
        while self.reading and self.reading[0].drip_deadline <= now:
            conn = self.reading[0]
            self._stop_reading(conn)
            self._refuse(conn, Refused(408))
        if not self.alive:
            for conn in [c for c in self.reading if not c.drip_buffer]:
                self._stop_reading(conn)
                self._close(conn)

    # -- a thread serves one whole request ------------------------------------------------------------
    def handle(self, conn):
        request = getattr(conn, "drip_request", None)
        if request is not None:
            conn.drip_request = None
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(request)
        return super().handle(conn)

    def finish_request(self, conn, fs) -> None:
        leftover = getattr(conn, "drip_leftover", b"")
        conn.drip_leftover = b""
        kept = (self.alive and not fs.cancelled() and fs.exception() is None and fs.result() is True
                and conn.parser is not None and not conn.parser.unreader.buf.getvalue())
        if leftover and kept:  # the client pipelined its next request: read it the same way
            self._start_reading(conn, leftover)
            return
        super().finish_request(conn, fs)
