"""A minimal asyncio SMTP acceptor that counts accepted messages per envelope recipient.

Enough SMTP for smtplib (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT), no auth, no TLS, loopback only.
Run alone with `python -m bench.smtp_sink --port 2525`; the bench scripts start it in a thread.
"""
from __future__ import annotations

import argparse
import asyncio
import threading
from collections import Counter


class Sink:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.counts.values())

    def snapshot(self) -> Counter[str]:
        with self.lock:
            return Counter(self.counts)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        rcpts: list[str] = []
        say("220 sink ESMTP")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    say("250-sink\r\n250 8BITMIME" if verb == b"EHLO" else "250 sink")
                elif verb == b"MAIL":
                    rcpts = []
                    say("250 ok")
                elif verb == b"RCPT":
                    rcpts.append(line.split(b":", 1)[1].strip().strip(b"<>").split(b">")[0].decode().lower())
                    say("250 ok")
                elif verb == b"DATA":
                    say("354 end with .")
                    await writer.drain()
                    while await reader.readline() not in (b".\r\n", b""):
                        pass
                    with self.lock:
                        self.counts.update(rcpts)
                    rcpts = []
                    say("250 queued")
                elif verb == b"QUIT":
                    say("221 bye")
                    break
                else:  # RSET, NOOP
                    say("250 ok")
                await writer.drain()
        finally:
            writer.close()

    async def _main(self) -> None:
        server = await asyncio.start_server(self._session, self.host, self.port)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await server.serve_forever()

    def start(self) -> Sink:
        """Serve in a daemon thread; returns once the port is bound."""
        def run() -> None:
            self.loop = asyncio.new_event_loop()
            try:
                self.loop.run_until_complete(self._main())
            except asyncio.CancelledError:
                pass

        threading.Thread(target=run, daemon=True, name="smtp-sink").start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self.loop is not None:
            for task in asyncio.all_tasks(self.loop):
                self.loop.call_soon_threadsafe(task.cancel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=2525)
    args = parser.parse_args()
    sink = Sink(port=args.port).start()
    print(f"SMTP sink on 127.0.0.1:{sink.port}; Ctrl-C prints the totals")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        counts = sink.snapshot()
        print(f"{sum(counts.values())} messages, {len(counts)} recipients, "
              f"{sum(1 for c in counts.values() if c > 1)} doubled")


if __name__ == "__main__":
    main()
