"""Provider API throughput: two Drip workers sending through each provider transport against a local fake
that answers in that provider's format after an injected round trip (bench/provider_fake.py, 80 ms by
default), against a bare client sending the same requests with the same concurrency over keep-alive
connections, measured in the same run.

Drip: N queued readers, 2 worker processes (bench/worker.py: claim, render, MIME, DKIM if set, send,
record), DRIP_EMAIL_URL pointing the real transport at the fake. emails/s = N / (last end - first start).
The fake counts emails per recipient: every reader must get exactly one (zero missing, zero doubled).

Bare client: 2 processes, each keeping Drip's `concurrency` requests in flight from one thread (as the
transport does), sending the same requests over the transport's keep-alive connections: each request
built as a client of that API builds it (the JSON body of its emails, the multipart form, the SigV4
signature), with the transport's own request code, from emails composed before the clock starts; no
database, no composing, no dispatching. (Until 2026-12-07 it re-posted one request's bytes, built once:
that measured the HTTP exchange alone, not a client; later that day it ran one thread per request in
flight, as the transport then did.)

    .venv/bin/python bench/providers.py [--n 6000] [--delay 0.08] [--providers postmark,resend,...]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PY, ROOT, Row, cpu_bound_row, make_templates, pg_create, pg_drop, print_table, seed, sqlite_create
from send import bench_composer, bench_job, rate, run_workers, worker_env

PROVIDERS = ("postmark", "resend", "sendgrid", "mailgun", "ses")
# Requests in flight per worker. Batch APIs need few; single-email APIs need about
# target rate x round trip / workers (1,000/s x 0.08 s / 2 = 40) and a margin for the ends of chunks.
CONCURRENCY = {"postmark": 4, "resend": 4, "sendgrid": 64, "mailgun": 64, "ses": 64}


def provider_url(provider: str, port: int) -> str:
    q = f"endpoint=http://127.0.0.1:{port}&concurrency={CONCURRENCY[provider]}&timeout=30"
    return {"postmark": f"postmark://pm-token@?stream=broadcast&{q}", "sendgrid": f"sendgrid://SG.key@?{q}",
            "mailgun": f"mailgun://mg-key@mg.example.org?{q}", "ses": f"ses://AKIDEXAMPLE:secret@us-east-1?{q}",
            "resend": f"resend://re_key@?{q}"}[provider]


class FakeProcess:
    def __init__(self, delay: float) -> None:
        self.proc = subprocess.Popen([PY, str(ROOT / "bench" / "provider_fake.py"), "--delay", str(delay)],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening "):
            raise RuntimeError(f"provider fake did not start: {line!r}")
        self.port = int(line.split()[1])

    def call(self, path: str) -> dict:
        import requests

        method = "GET" if path == "/stats" else "POST"
        return requests.request(method, f"http://127.0.0.1:{self.port}{path}", timeout=30).json()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def per_request(provider: str) -> int:
    """Emails per request, as Drip sends them: a batch never spans the dispatcher's chunks."""
    from service.dispatch.send import CHUNK
    from service.transports import make_transport

    return min(make_transport(provider_url(provider, 1)).batch_size, CHUNK)


def bare(provider: str, port: int, templates: str, requests_total: int, threads: int) -> None:
    """--bare mode: `requests_total` requests of `provider`, `threads` of them in flight at a time, each built
    by the transport's request code from emails composed beforehand, over the transport's keep-alive
    connections."""
    from service.transports import make_transport

    transport = make_transport(provider_url(provider, port))
    size = per_request(provider)
    composer = bench_composer(Path(templates))
    mime = getattr(transport, "sends_mime", True)
    emails = [composer.compose(bench_job(Path(templates), i), sign=mime) for i in range(1, max(size, 64) + 1)]
    batches = [emails[i:i + size] for i in range(0, len(emails) - size + 1, size)]
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.time()
    failures = []
    window: deque = deque()  # requests in flight, oldest first, as the transport keeps them
    for n in range(requests_total):
        if len(window) == threads:
            if window.popleft().result().status_code >= 300:
                failures.append(n)
        batch = batches[n % len(batches)]
        window.append(transport.request(batch[0]) if size == 1 else transport.request_batch(batch))
    while window:
        if window.popleft().result().status_code >= 300:
            failures.append(-1)
    transport.close()
    print(json.dumps({"start": start, "end": time.time(), "failures": len(failures)}), flush=True)


def bare_rate(provider: str, fake: FakeProcess, templates: Path, n: int, processes: int = 2) -> float:
    size = per_request(provider)
    requests_each = max(1, n // size // processes)
    procs = [subprocess.Popen([PY, __file__, "--bare", provider, "--port", str(fake.port), "--templates",
                               str(templates), "--requests", str(requests_each),
                               "--threads", str(CONCURRENCY[provider])],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    for p in procs:
        p.stdout.readline()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
    if any(r["failures"] for r in results):
        raise RuntimeError(f"bare client: {provider} fake refused requests")
    return rate(results, requests_each * size * processes)


def measure_drip(provider: str, fake: FakeProcess, db: str, tmp: Path, templates: Path, n: int,
                 extra: dict[str, str]) -> dict:
    tag = f"prov_{provider}"
    url = pg_create(f"drip_bench_{tag}") if db == "postgresql" else sqlite_create(tmp / f"{tag}.sqlite3")
    seed(url, total=n, due=n, now=datetime.now(UTC))
    fake.call("/reset")
    results = run_workers(2, worker_env(url, provider_url(provider, fake.port), templates, **extra),
                          others=(fake.proc.pid,))
    stats = fake.call("/stats")
    if db == "postgresql":
        pg_drop(f"drip_bench_{tag}")
    return {"rate": rate(results, n), "sent": sum(r["sent"] for r in results), "missing": n - stats["distinct"],
            "doubles": stats["doubles"], "worker_us": sum(r["cpu_s"] for r in results) / n * 1e6,
            "others_us": results[0]["others_cpu_s"] / n * 1e6}


def run(n: int = 6_000, delay: float = 0.08, providers: tuple[str, ...] = PROVIDERS, db: str = "postgresql",
        dkim: str | None = "rsa") -> list[Row]:
    """One row per provider (rate vs the bare client, goal >= 0.6 and >= 1,000/s) and one of counts.
    Signed with an RSA-2048 DKIM key by default, as in production (Mailgun and SES carry our MIME)."""
    from send import dkim_key_files

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        templates = make_templates(tmp / "templates")
        extra = dkim_key_files(tmp, dkim)
        fake = FakeProcess(delay)
        try:
            for provider in providers:
                before = bare_rate(provider, fake, templates, n)
                got = measure_drip(provider, fake, db, tmp, templates, n, extra)
                limit = (before + bare_rate(provider, fake, templates, n)) / 2
                counts_ok = got["sent"] == n and got["missing"] == 0 and got["doubles"] == 0
                rows.append(Row(f"{provider} 2 workers, {delay * 1000:.0f} ms API, concurrency "
                                f"{CONCURRENCY[provider]}", got["rate"], "/s", "bare client, same requests",
                                limit, ">= 60%, 1000/s",
                                counts_ok and got["rate"] >= 0.6 * limit and got["rate"] >= 1000))
                rows.append(Row(f"  {provider}: sent/missing/doubles (worker CPU {got['worker_us']:,.0f} us)",
                                got["sent"], "", "missing + doubles", got["missing"] + got["doubles"], "0 + 0",
                                counts_ok))
                # Drip's two workers, PostgreSQL and the fake API all run on this machine's cores.
                rows.append(cpu_bound_row(provider, got["worker_us"] + got["others_us"], "bare client", limit))
        finally:
            fake.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="Drip through each provider API vs a bare client")
    parser.add_argument("--n", type=int, default=6_000)
    parser.add_argument("--delay", type=float, default=0.08, help="the fake API's round trip, seconds")
    parser.add_argument("--providers", default=",".join(PROVIDERS))
    parser.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--dkim", choices=("rsa", "none"), default="rsa")
    parser.add_argument("--bare", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--templates", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        bare(args.bare, args.port, args.templates, args.requests, args.threads)
        return
    print_table(run(args.n, args.delay, tuple(args.providers.split(",")), args.db,
                    None if args.dkim == "none" else args.dkim))


if __name__ == "__main__":
    main()
