"""POST /signup under `drip web` (gunicorn, 2 workers) against the ceiling of this machine, same run.

For PostgreSQL and SQLite: `drip web --workers 2` (rate limit off: the bench is one client address)
and bench/ceiling_app.py (a minimal Flask app inserting one row, same driver, same gunicorn settings)
are each driven for a bounded time by an asyncio HTTP/1.1 load generator in this process (keep-alive
connections, a unique address per request). Reported: requests/s, p50 and p99 latency, errors, and
whether every accepted signup is in the database afterwards.

    .venv/bin/python bench/signup.py [--seconds 5] [--connections 16] [--db postgresql,sqlite]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PY, ROOT, Row, cpu_seconds, free_port, pg_create, pg_drop, print_table, sqlite_create
from send import worker_env

HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


async def client(port: int, deadline: float, tag: str, latencies: list[float], errors: list[str]) -> None:
    """One keep-alive connection posting unique signups back to back until the deadline. A request whose
    connection drops, or a connection refused, is counted as an error (the run goes on and reports it)."""
    reader = writer = None
    n = 0
    while time.perf_counter() < deadline:
        if writer is None:
            start = time.perf_counter()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError as exc:  # a failed attempt: one latency and one error, like a dropped request
                latencies.append(time.perf_counter() - start)
                errors.append(type(exc).__name__)
                await asyncio.sleep(0.05)
                continue
        n += 1
        body = json.dumps({"email": f"s-{tag}-{n}@example.com", "name": "Bench Reader"}).encode()
        writer.write(b"POST /signup HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Accept: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        start = time.perf_counter()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            latencies.append(time.perf_counter() - start)
            errors.append(type(exc).__name__)
            writer.close()
            writer = None
            continue
        latencies.append(time.perf_counter() - start)
        status = int(head.split(b" ", 2)[1])
        if status != 201:
            errors.append(f"{status}")
        if b"connection: close" in head.lower():
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


async def load(port: int, seconds: float, connections: int, tag: str) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    await asyncio.gather(*(client(port, start + seconds, f"{tag}{c}", latencies, errors) for c in range(connections)))
    return latencies, errors, time.perf_counter() - start


def start_server(argv: list[str], env: dict[str, str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            HTTP.open(urllib.request.Request(f"http://127.0.0.1:{port}/signup", data=b"{}", method="POST",
                                             headers={"Content-Type": "application/json"}), timeout=2)
        except urllib.error.HTTPError:
            return proc  # any HTTP answer: the server is up
        except OSError:
            time.sleep(0.2)
            continue
        return proc
    proc.kill()
    raise RuntimeError(f"{argv} did not answer within 30 s")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def gunicorn_workers(master: int, n: int) -> list[int]:
    """The pids of the master's n workers, once all n have started (for the CPU split per worker)."""
    deadline = time.monotonic() + 10
    while True:
        pids = [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
        if len(pids) >= n or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)


def count_rows(url: str, sql: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        n = conn.execute(text(sql)).scalar()
    engine.dispose()
    return n


ROUNDS = 3  # each app is driven in turn, three times, so a slow spell of the machine falls on both


def measure(servers: dict[str, tuple[list[str], dict[str, str]]], seconds: float, connections: int) -> dict:
    """Start every server, then drive them in turn for ROUNDS rounds of seconds / ROUNDS each; per server:
    rate, errors, p50/p99 over all its rounds, and the CPU of its two workers per request."""
    procs: dict[str, tuple[subprocess.Popen, int, list[int]]] = {}
    try:
        for tag, (argv, env) in servers.items():
            port = free_port()
            proc = start_server([*argv, "--port", str(port)], env, port)
            procs[tag] = (proc, port, gunicorn_workers(proc.pid, 2))
        totals = {tag: {"latencies": [], "errors": [], "took": 0.0, "cpu": [0.0, 0.0]} for tag in servers}
        for n in range(ROUNDS):
            for tag, (_proc, port, workers) in procs.items():
                before = [cpu_seconds([w]) for w in workers]
                latencies, errors, took = asyncio.run(load(port, seconds / ROUNDS, connections, f"{tag}{n}-"))
                total = totals[tag]
                total["latencies"] += latencies
                total["errors"] += errors
                total["took"] += took
                total["cpu"] = [c + cpu_seconds([w]) - b for c, w, b in zip(total["cpu"], workers, before, strict=True)]
    finally:
        for proc, _port, _workers in procs.values():
            stop_server(proc)
    results = {}
    for tag, total in totals.items():
        latencies, split = sorted(total["latencies"]), total["cpu"]
        results[tag] = {
            "rate": len(latencies) / total["took"], "ok": len(latencies) - len(total["errors"]),
            "errors": len(total["errors"]), "p50": latencies[len(latencies) // 2] * 1000,
            "p99": latencies[int(len(latencies) * 0.99)] * 1000, "cpu_us": sum(split) * 1e6 / max(len(latencies), 1),
            "share": min(split) / max(sum(split), 1e-9)}
    return results


def run(seconds: float = 5.0, connections: int = 16, dbs: tuple[str, ...] = ("postgresql", "sqlite")) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for db in dbs:
            urls = {}
            for kind in ("drip", "ceiling"):
                name = f"drip_bench_signup_{kind}"
                urls[kind] = pg_create(name) if db == "postgresql" else sqlite_create(Path(tmpdir) / f"{kind}.db")
            env = worker_env(urls["drip"], "file:///dev/null", ROOT / "email_templates",
                             DRIP_SIGNUP_RATE_LIMIT="off", DRIP_INSTANCE_DIR=str(Path(tmpdir) / "instance"))
            env["DRIP_DEFAULT_CAMPAIGN"] = "back-pain-bundle"
            env["DRIP_TEMPLATES_DIR"] = str(ROOT / "email_templates")
            measured = measure({"d": ([str(ROOT / ".venv" / "bin" / "drip"), "web", "--workers", "2"], env),
                                "c": ([PY, str(ROOT / "bench" / "ceiling_app.py")],
                                      {**env, "DATABASE_URL": urls["ceiling"]})}, seconds, connections)
            drip, ceiling = measured["d"], measured["c"]
            stored = count_rows(urls["drip"], "SELECT count(*) FROM subscribers s JOIN enrollments e "
                                              "ON e.subscriber_id = s.id JOIN consents c ON c.subscriber_id = s.id")
            if db == "postgresql":
                for kind in ("drip", "ceiling"):
                    pg_drop(f"drip_bench_signup_{kind}")
            complete = drip["errors"] == 0 and stored == drip["ok"]
            rows.append(Row(f"signup {db}: req/s", drip["rate"], "/s", "minimal Flask insert", ceiling["rate"],
                            ">= 70%", complete and drip["rate"] >= 0.7 * ceiling["rate"]))
            rows.append(Row(f"signup {db}: p99 latency (p50 {drip['p50']:.1f} ms)", drip["p99"], "ms",
                            "ceiling p99 (ms)", ceiling["p99"], "< 50 ms", drip["p99"] < 50))
            rows.append(Row(f"signup {db}: errors; stored = accepted", drip["errors"], "", f"accepted {drip['ok']}, "
                            "stored", stored, "0; equal", complete))
            # CPU of the two gunicorn workers per request (not the load generator's, not the database
            # server's): unlike the rates, it does not drift with the machine's other load. The smaller
            # worker's share shows both workers served (0.5 = evenly; near 0 = one worker did everything).
            rows.append(Row(f"signup {db}: worker CPU per request (min share {drip['share']:.2f})",
                            drip["cpu_us"], "us", f"ceiling (min share {ceiling['share']:.2f})", ceiling["cpu_us"],
                            "report", True))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="Signup throughput vs a minimal Flask insert")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--db", default="postgresql,sqlite")
    args = parser.parse_args()
    print_table(run(args.seconds, args.connections, tuple(args.db.split(","))))


if __name__ == "__main__":
    main()
