"""A local stand-in for the five provider APIs, fast enough to bench against: one asyncio process speaking
HTTP/1.1 with keep-alive, answering every send request in the provider's documented format after an
injected round-trip delay (`--delay 0.08`, the latency of a real API), without blocking other requests
meanwhile. It counts every email per recipient, so a run can prove zero missing and zero doubled.

    .venv/bin/python bench/provider_fake.py --delay 0.08   # prints "listening PORT"

Paths: POST /email and /email/batch (Postmark), /emails and /emails/batch (Resend), /v3/mail/send
(SendGrid), /v3/<domain>/messages.mime (Mailgun), /v2/email/outbound-emails (Amazon SES);
GET /stats -> {"total", "distinct", "doubles"}; POST /reset.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import uuid
from collections import Counter

_MAILGUN_TO = re.compile(rb'name="to"\r\n\r\n([^\r]*)\r\n')
_ADDRESS = re.compile(r"<([^>]+)>\s*$")


class Fake:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.received: Counter[str] = Counter()

    def answer(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) for one request, counting the emails it carries."""
        if path == "/stats":
            doubles = sum(1 for n in self.received.values() if n > 1)
            return 200, {}, json.dumps({"total": sum(self.received.values()), "distinct": len(self.received),
                                        "doubles": doubles}).encode()
        if path == "/reset":
            self.received.clear()
            return 200, {}, b"{}"
        ident = str(uuid.uuid4())
        if path == "/email/batch":
            emails = json.loads(body)
            out = []
            for mail in emails:
                self._count(mail["To"])
                out.append({"ErrorCode": 0, "Message": "OK", "MessageID": str(uuid.uuid4()), "To": mail["To"]})
            return 200, {}, json.dumps(out).encode()
        if path == "/emails/batch":
            emails = json.loads(body)
            for mail in emails:
                self._count(mail["to"][0])
            return 200, {}, json.dumps({"data": [{"id": str(uuid.uuid4())} for _ in emails]}).encode()
        if path == "/email":
            self._count(json.loads(body)["To"])
            return 200, {}, json.dumps({"ErrorCode": 0, "Message": "OK", "MessageID": ident}).encode()
        if path == "/emails":
            self._count(json.loads(body)["to"][0])
            return 200, {}, json.dumps({"id": ident}).encode()
        if path == "/v3/mail/send":
            self._count(json.loads(body)["personalizations"][0]["to"][0]["email"])
            return 202, {"X-Message-Id": ident.replace("-", "")[:22]}, b""
        if path.endswith("/messages.mime"):
            found = _MAILGUN_TO.search(body)
            self._count(found.group(1).decode() if found else "?")
            return 200, {}, json.dumps({"id": f"<{ident}@mg.example.org>", "message": "Queued. Thank you."}).encode()
        if path == "/v2/email/outbound-emails":
            data = json.loads(body)
            self._count(data["Destination"]["ToAddresses"][0])
            base64.b64decode(data["Content"]["Raw"]["Data"][:64])  # the field is there and is base64
            return 200, {}, json.dumps({"MessageId": f"0100{ident}-000000"}).encode()
        return 404, {}, b'{"message": "no such path"}'

    def _count(self, to: str) -> None:
        found = _ADDRESS.search(to)
        self.received[(found.group(1) if found else to).strip().lower()] += 1


class Connection(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and Content-Length bodies: what `requests` sends."""

    def __init__(self, fake: Fake) -> None:
        self.fake = fake
        # A bytearray grows in place, and the header is parsed once per request: a 3.5 MB batch arrives in
        # ~50 pieces, and re-joining and re-scanning the whole buffer for each cost this fake more CPU than
        # the clients it measures.
        self.buffer = bytearray()
        self.request: tuple[str, int, int] | None = None  # (path, where the body starts, where it ends)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.request is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buffer[:end].decode("latin-1").split("\r\n")
                length = 0
                for line in head[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                self.request = (head[0].split(" ")[1].split("?")[0], end + 4, end + 4 + length)
            path, start, stop = self.request
            if len(self.buffer) < stop:
                return
            body = bytes(self.buffer[start:stop])
            del self.buffer[:stop]
            self.request = None
            status, headers, payload = self.fake.answer(path, body)
            delay = self.fake.delay if path not in ("/stats", "/reset") else 0.0
            asyncio.get_running_loop().call_later(delay, self._reply, status, headers, payload)

    def _reply(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        lines = [f"HTTP/1.1 {status} {'OK' if status < 300 else 'Error'}", "Content-Type: application/json",
                 f"Content-Length: {len(payload)}", *(f"{k}: {v}" for k, v in headers.items())]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(delay: float) -> None:
    fake = Fake(delay)
    server = await asyncio.get_running_loop().create_server(lambda: Connection(fake), "127.0.0.1", 0, backlog=1024)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.08, help="seconds before each answer (round trip)")
    asyncio.run(serve(parser.parse_args().delay))


if __name__ == "__main__":
    main()
