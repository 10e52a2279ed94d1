"""Load and soak for Drip. Run from the project root with the venv's Python.

Load (default): `drip web` (gunicorn) on PostgreSQL takes POST /signup from this second process over
loopback for --seconds; then every 201 must be in the database, and after a `drip tick` against a local
SMTP sink every accepted address must have had its welcome exactly once.

Soak (`--soak N`, documented size 100000): N readers due now, two `drip worker` processes sending to the
sink, one of them SIGTERMed halfway and started again; then zero lost and zero doubled must hold.

    .venv/bin/python -m bench.load_signup --seconds 20
    .venv/bin/python -m bench.load_signup --soak 100000

Exit status 1 when anything was lost or doubled. Figures go to stdout (and --json FILE).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, func, insert, select, text

from bench.smtp_sink import Sink
from service.core.config import Settings
from service.core.models import Consent, Enrollment, Message, Subscriber

ROOT = Path(__file__).resolve().parent.parent
DRIP = [sys.executable, "-m", "service"]
DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/drip_bench"


def ensure_database(url: str) -> str:
    """Create the PostgreSQL database if missing, then migrate it; returns the SQLAlchemy URL."""
    sa_url = Settings.from_env({"DATABASE_URL": url, "DRIP_SECRET_KEY": "k" * 32}).database_url
    if sa_url.startswith("postgresql"):
        base, name = sa_url.rsplit("/", 1)
        admin = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar():
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    return sa_url


class Bench:
    def __init__(self, database_url: str, workdir: Path) -> None:
        self.sink = Sink().start()
        self.workdir = workdir
        self.port = _free_port()
        self.tag = secrets.token_hex(4)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRIP_") and k != "DATABASE_URL"}
        env.update(DATABASE_URL=database_url, DRIP_EMAIL_URL=f"smtp://127.0.0.1:{self.sink.port}?timeout=30",
                   DRIP_SECRET_KEY=secrets.token_hex(32), DRIP_BASE_URL=f"http://127.0.0.1:{self.port}",
                   DRIP_POSTAL_ADDRESS="Bench, 1 Loopback Road", DRIP_SIGNUP_RATE_LIMIT="off",
                   DRIP_SIGNUP_ADDRESS_RATE_LIMIT="off", DRIP_INSTANCE_DIR=str(workdir / "instance"),
                   DRIP_TICK_SECONDS="1", PYTHONPATH=str(ROOT))
        self.env = env
        self.engine = create_engine(Settings.from_env({**env}).database_url)
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str) -> subprocess.Popen:
        log = open(self.workdir / f"{args[0]}-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen([*DRIP, *args], env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = 600) -> None:
        subprocess.run([*DRIP, *args], env=self.env, cwd=ROOT, check=True, timeout=timeout,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self, proc: subprocess.Popen, timeout: float = 120) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def close(self) -> None:
        for proc in self.procs:
            self.stop(proc, timeout=30)
        self.sink.stop()
        self.engine.dispose()

    def delivered(self, prefix: str) -> Counter[str]:
        return Counter({a: n for a, n in self.sink.snapshot().items() if a.startswith(prefix)})

    def queued(self, prefix: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(Message).where(
                Message.to_email.like(f"{prefix}%"))).scalar()

    def unsent(self, prefix: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(Message).where(
                Message.to_email.like(f"{prefix}%"), Message.status != "sent")).scalar()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- load ----------------------------------------------------------------------------------------------
def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"drip web exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("drip web did not become healthy")


def drive(port: int, prefix: str, seconds: float, clients: int) -> tuple[list[str], Counter[str], list[float]]:
    """`clients` keep-alive connections post unique signups until the time is up."""
    accepted: list[str] = []
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(n: int) -> None:
        conn, i = http.client.HTTPConnection("127.0.0.1", port, timeout=30), 0
        while time.monotonic() < deadline:
            address = f"{prefix}{n}-{i}@example.org"
            i += 1
            started = time.perf_counter()
            try:
                conn.request("POST", "/signup", body=json.dumps({"email": address}),
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                status = str(resp.status)
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with lock:
                statuses[status] += 1
                latencies.append(time.perf_counter() - started)
                if status == "201":
                    accepted.append(address)
        conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return accepted, statuses, latencies


def load(bench: Bench, seconds: float, clients: int, web_workers: int) -> dict:
    prefix = f"load-{bench.tag}-"
    web = bench.start("web", "--host", "127.0.0.1", "--port", str(bench.port), "--workers", str(web_workers))
    wait_healthy(bench.port, web)
    started = time.monotonic()
    accepted, statuses, latencies = drive(bench.port, prefix, seconds, clients)
    elapsed = time.monotonic() - started
    bench.stop(web)
    with bench.engine.connect() as conn:
        stored = set(conn.execute(select(Subscriber.email_key).where(Subscriber.email_key.like(f"{prefix}%")))
                     .scalars())
    missing = set(accepted) - stored
    send_started = time.monotonic()
    bench.run("tick")
    if bench.unsent(prefix):
        bench.run("tick", "--now", (datetime.now(UTC) + timedelta(hours=7)).isoformat())
    send_seconds = time.monotonic() - send_started
    got = bench.delivered(prefix)
    lat = sorted(latencies) or [0.0]
    return {
        "mode": "load", "seconds": round(elapsed, 1), "clients": clients, "web_workers": web_workers,
        "requests": sum(statuses.values()), "statuses": dict(statuses), "accepted": len(accepted),
        "signups_per_second": round(len(accepted) / elapsed, 1),
        "latency_ms_p50": round(statistics.median(lat) * 1000, 1),
        "latency_ms_p99": round(lat[int(len(lat) * 0.99) - 1 if len(lat) > 1 else 0] * 1000, 1),
        "missing_in_db": len(missing), "welcomes_sent": sum(got.values()),
        "send_seconds": round(send_seconds, 1),
        "lost": sum(1 for a in accepted if got[a] == 0), "doubled": sum(n - 1 for n in got.values() if n > 1),
    }


# -- soak ----------------------------------------------------------------------------------------------
def seed(bench: Bench, prefix: str, n: int) -> None:
    """N readers with their enrollment and consent, all due now, inserted in bulk."""
    now = datetime.now(UTC)
    due = now - timedelta(minutes=1)
    with bench.engine.begin() as conn:
        for start in range(0, n, 5000):
            rows = [{"public_id": secrets.token_urlsafe(16), "email": f"{prefix}{i}@example.org",
                     "email_key": f"{prefix}{i}@example.org", "name": "", "status": "active",
                     "created_at": now, "updated_at": now} for i in range(start, min(n, start + 5000))]
            conn.execute(insert(Subscriber), rows)
        ids = conn.execute(select(Subscriber.id).where(Subscriber.email_key.like(f"{prefix}%"))).scalars().all()
        for start in range(0, len(ids), 5000):
            chunk = ids[start:start + 5000]
            conn.execute(insert(Enrollment), [{"subscriber_id": i, "campaign": "back-pain-bundle",
                                               "status": "active", "next_step": 0, "next_due_at": due,
                                               "created_at": now, "updated_at": now} for i in chunk])
            conn.execute(insert(Consent), [{"subscriber_id": i, "campaign": "back-pain-bundle", "created_at": now,
                                            "source": "json", "wording": "bench"} for i in chunk])


def soak(bench: Bench, n: int, workers: int, stall_seconds: float) -> dict:
    prefix = f"soak-{bench.tag}-"
    seed(bench, prefix, n)
    started = time.monotonic()
    procs = [bench.start("worker") for _ in range(workers)]
    restarted = False
    last, last_change = (0, 0), time.monotonic()
    while True:
        total = sum(bench.delivered(prefix).values())
        progress = (total, bench.queued(prefix))  # queueing 100k rows comes before the first send
        if progress != last:
            last, last_change = progress, time.monotonic()
        if not restarted and total >= n // 2:
            bench.stop(procs[0])  # SIGTERM: it finishes the batch it holds, then exits
            procs[0] = bench.start("worker")
            restarted = True
        if total >= n and bench.unsent(prefix) == 0:
            break
        if time.monotonic() - last_change > stall_seconds:
            break
        time.sleep(1)
    elapsed = time.monotonic() - started
    for proc in procs:
        bench.stop(proc)
    got = bench.delivered(prefix)
    return {"mode": "soak", "emails": n, "workers": workers, "restarted": restarted, "seconds": round(elapsed, 1),
            "emails_per_second": round(sum(got.values()) / elapsed, 1), "delivered": sum(got.values()),
            "lost": n - len(got), "doubled": sum(c - 1 for c in got.values() if c > 1),
            "not_sent_in_db": bench.unsent(prefix)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Drip load test and soak")
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_DB))
    p.add_argument("--seconds", type=float, default=20.0, help="load duration (default 20)")
    p.add_argument("--clients", type=int, default=16, help="concurrent keep-alive clients (default 16)")
    p.add_argument("--web-workers", type=int, default=4, help="gunicorn workers (default 4)")
    p.add_argument("--soak", type=int, default=0, metavar="N", help="soak with N emails instead (documented: 100000)")
    p.add_argument("--soak-workers", type=int, default=2)
    p.add_argument("--stall-seconds", type=float, default=120.0, help="give up after this long without progress")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    url = ensure_database(args.database_url)
    with tempfile.TemporaryDirectory(prefix="drip-bench-") as tmp:
        bench = Bench(url, Path(tmp))
        try:
            bench.run("db", "upgrade")
            if args.soak:
                result = soak(bench, args.soak, args.soak_workers, args.stall_seconds)
            else:
                result = load(bench, args.seconds, args.clients, args.web_workers)
        finally:
            bench.close()
    for key, value in result.items():
        print(f"{key}: {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    bad = result["lost"] or result["doubled"] or result.get("missing_in_db") or result.get("not_sent_in_db")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
