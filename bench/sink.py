"""A minimal SMTP sink for benchmarks: accepts everything on loopback, counts messages per recipient.

aiosmtpd saturates a core at about 450 messages/s of 25 KB (it parses every line in Python), so as a
bench target it would measure itself. This acceptor only scans for the end-of-data marker. It
announces PIPELINING (RFC 2920) and answers every complete command in a received chunk at once.

Two extra verbs let the bench read and reset the counts over SMTP itself:
`XSTAT` -> "250 <messages> <distinct recipients> <recipients received more than once>"; `XRESET` clears.
Run: `python bench/sink.py [--port N]`; prints "listening <port>" when ready.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import sys

COUNTS: collections.Counter[bytes] = collections.Counter()
EHLO = b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10485760\r\n"


class Sink(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        self.buf = b""
        self.in_data = False
        self.rcpts: list[bytes] = []
        self.scan = 0  # where the end-of-data search resumes, so a long message is scanned once
        self.t.write(b"220 sink ready\r\n")

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out: list[bytes] = []
        while True:
            if self.in_data:
                end = self.buf.find(b"\r\n.\r\n", self.scan)
                if end < 0:
                    self.scan = max(0, len(self.buf) - 4)  # a marker may be split across reads
                    break
                self.buf, self.scan = self.buf[end + 5:], 0
                self.in_data = False
                COUNTS.update(self.rcpts)
                self.rcpts = []
                out.append(b"250 2.0.0 ok\r\n")
                continue
            nl = self.buf.find(b"\r\n")
            if nl < 0:
                break
            line, self.buf = self.buf[:nl], self.buf[nl + 2:]
            out.append(self.command(line))
            if out[-1] is None:
                out.pop()
                break
        if out:
            self.t.write(b"".join(out))

    def command(self, line: bytes) -> bytes | None:
        verb = line[:4].upper()
        if verb in (b"EHLO", b"HELO"):
            return EHLO
        if verb == b"MAIL" or verb == b"RSET":
            self.rcpts = []
            return b"250 ok\r\n"
        if verb == b"RCPT":
            self.rcpts.append(line[8:].strip(b" <>").lower())
            return b"250 ok\r\n"
        if verb == b"DATA":
            self.in_data = True
            return b"354 go ahead\r\n"
        if verb == b"QUIT":
            self.t.write(b"221 bye\r\n")
            self.t.close()
            return None
        if verb == b"XSTA":
            doubles = sum(1 for c in COUNTS.values() if c > 1)
            return f"250 {sum(COUNTS.values())} {len(COUNTS)} {doubles}\r\n".encode()
        if verb == b"XRES":
            COUNTS.clear()
            return b"250 cleared\r\n"
        return b"250 ok\r\n"  # NOOP and anything else


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", port)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    try:
        asyncio.run(serve(parser.parse_args().port))
    except KeyboardInterrupt:
        sys.exit(0)
