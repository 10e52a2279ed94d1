"""Concurrency against real processes: `drip web` under a burst of duplicate signups, several `drip tick`
processes sharing one database, a worker SIGKILLed mid-pass, and an SMTP server that goes away and comes back.

Every process is a real `.venv/bin/drip` subprocess talking to the test's database and to the aiosmtpd
server on loopback; nothing is mocked. Every wait is bounded.
"""
from __future__ import annotations

import email
import email.policy
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from service.audience.signups import ConsentMeta, parse_signup, signup
from service.core.models import CampaignState, Consent, Enrollment, Event, Message, Subscriber

ROOT = Path(__file__).resolve().parent.parent
DRIP = str(ROOT / ".venv" / "bin" / "drip")
CAMPAIGN = "back-pain-bundle"
# One secret for every process of the session, so tokens made by one are valid in another.
SECRET_KEY = secrets.token_hex(32)
POSTAL_ADDRESS = "Back Pain Warriors, 12 Test Street, Springfield"
# 08:00 in New York on a Monday, far from any daylight-saving change; weekly steps are due at 09:00 there.
T0 = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
PROCESS_TIMEOUT = 60.0
# urllib honours http_proxy from the environment; these requests must stay on loopback.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- processes -----------------------------------------------------------------------------------------
class Proc:
    """One `drip` subprocess in its own process group; stdout and stderr go to a log file in tmp_path."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.argv, self.log = argv, log
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def name(self) -> str:
        return " ".join(["drip", *self.argv[1:]])

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float = PROCESS_TIMEOUT, *, check: bool = True) -> int:
        try:
            rc = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"{self.name} still running after {timeout} s:\n{self.output()}")
        if check and rc != 0:
            pytest.fail(f"{self.name} exited with {rc}:\n{self.output()}")
        return rc

    def stop(self) -> None:
        """SIGTERM (gunicorn shuts down gracefully), then SIGKILL to the process group if it lingers."""
        if self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)

    def summary(self) -> dict[str, int]:
        """The counts of `drip tick`'s last line: 'tick: queued 3, sent 3, deferred 0, ...'."""
        for line in reversed(self.output().splitlines()):
            if line.startswith("tick: "):
                return {k: int(v) for k, v in (part.rsplit(" ", 1) for part in line[len("tick: "):].split(", "))}
        pytest.fail(f"{self.name} printed no summary line:\n{self.output()}")


class Drip:
    """Starts `drip` subprocesses configured for this test's database and SMTP server."""

    def __init__(self, database_url: str, smtp_url: str, cwd: Path) -> None:
        self.cwd = cwd
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRIP_") and k != "DATABASE_URL"}
        env.update(DATABASE_URL=database_url, DRIP_EMAIL_URL=smtp_url, DRIP_SECRET_KEY=SECRET_KEY,
                   DRIP_BASE_URL=self.base_url, DRIP_POSTAL_ADDRESS=POSTAL_ADDRESS, DRIP_SIGNUP_RATE_LIMIT="off",
                   DRIP_SIGNUP_ADDRESS_RATE_LIMIT="off")  # 30 posts of one address, on purpose
        self.env = env
        self.procs: list[Proc] = []

    def start(self, *args: str, **env: object) -> Proc:
        log = self.cwd / f"drip-{len(self.procs) + 1:02d}-{args[0]}.log"
        proc = Proc([DRIP, *args], {**self.env, **{k: str(v) for k, v in env.items()}}, self.cwd, log)
        self.procs.append(proc)
        return proc

    def start_tick(self, now: datetime | None = None, **env: object) -> Proc:
        return self.start("tick", *(["--now", now.isoformat()] if now else []), **env)

    def tick(self, now: datetime | None = None, **env: object) -> dict[str, int]:
        proc = self.start_tick(now, **env)
        proc.wait()
        return proc.summary()

    def web(self, workers: int = 2, timeout: float = 30.0) -> Proc:
        proc = self.start("web", "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                pytest.fail(f"{proc.name} exited with {proc.popen.returncode} before answering:\n{proc.output()}")
            try:
                with HTTP.open(f"{self.base_url}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return proc
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        pytest.fail(f"{proc.name}: /healthz did not answer 200 within {timeout} s:\n{proc.output()}")

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def drip(database_url: str, smtp, tmp_path: Path) -> Iterator[Drip]:
    launcher = Drip(database_url, smtp.url, tmp_path)
    yield launcher
    launcher.stop_all()


# -- helpers -------------------------------------------------------------------------------------------
def seed(runtime, count: int, now: datetime, prefix: str = "reader") -> list[str]:
    """Sign `count` readers up through the signup function, all due at `now`; returns their addresses."""
    addresses = [f"{prefix}{i:03d}@example.com" for i in range(count)]
    campaign = runtime.campaigns[CAMPAIGN]
    with runtime.sessions() as session, session.begin():
        for i, address in enumerate(addresses):
            parsed = parse_signup({"email": address, "name": f"Reader {i}"}, campaigns=runtime.campaigns,
                                  default_campaign=CAMPAIGN)
            assert signup(session, parsed, campaign=campaign, meta=ConsentMeta(source="json"), now=now).created
    return addresses


def received(smtp) -> Counter[tuple[str, str]]:
    """How many emails the SMTP server accepted per (envelope recipient, Subject)."""
    with smtp.handler.lock:
        items = list(smtp.handler.accepted)
    counts: Counter[tuple[str, str]] = Counter()
    for _from, rcpts, raw in items:
        subject = str(email.message_from_bytes(raw, policy=email.policy.default)["Subject"])
        for rcpt in rcpts:
            counts[(rcpt.lower(), subject)] += 1
    return counts


def post_burst(url: str, addresses: list[str], timeout: float = 60.0) -> list[tuple[int | None, str]]:
    """POST one JSON signup per address, all threads released at once by a barrier; (status, body) each."""
    barrier = threading.Barrier(len(addresses))
    results: list[tuple[int | None, str]] = [(None, "no answer")] * len(addresses)

    def post(i: int, address: str) -> None:
        request = urllib.request.Request(
            url, data=json.dumps({"email": address, "name": "Dup Licate"}).encode(), method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            barrier.wait(timeout=timeout)
            with HTTP.open(request, timeout=timeout) as r:
                results[i] = (r.status, r.read().decode())
        except urllib.error.HTTPError as exc:
            results[i] = (exc.code, exc.read().decode(errors="replace"))
        except Exception as exc:  # connection reset, timeout, broken barrier: recorded and asserted on
            results[i] = (None, repr(exc))

    threads = [threading.Thread(target=post, args=(i, a), daemon=True) for i, a in enumerate(addresses)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout + 5
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "some signup requests never finished"
    return results


def assert_one_signup(runtime, results: list[tuple[int | None, str]], email_key: str) -> None:
    statuses = Counter(status for status, _body in results)
    assert set(statuses) <= {200, 201}, results
    assert statuses[201] == 1, statuses
    with runtime.sessions() as s:
        subscribers = s.scalars(select(Subscriber).where(Subscriber.email_key == email_key)).all()
        assert len(subscribers) == 1
        sub_id = subscribers[0].id
        assert s.scalar(select(func.count()).select_from(Enrollment).where(Enrollment.subscriber_id == sub_id)) == 1
        assert s.scalar(select(func.count()).select_from(Consent).where(Consent.subscriber_id == sub_id)) == 1


def message_statuses(runtime) -> Counter[str]:
    with runtime.sessions() as s:
        return Counter(dict(s.execute(select(Message.status, func.count()).group_by(Message.status)).all()))


# -- tests ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_thirty_concurrent_duplicate_signups(drip: Drip, runtime, smtp) -> None:
    """Thirty simultaneous signups of one address (then of one address in mixed case) make one subscriber,
    enrollment and consent each, exactly one 201, no 5xx, and one welcome email."""
    drip.web(workers=2)
    url = f"{drip.base_url}/signup"

    results = post_burst(url, ["dup@example.com"] * 30)
    assert_one_signup(runtime, results, "dup@example.com")

    variants = ["Mixed.Case@Example.COM", "mixed.case@example.com", "MIXED.CASE@EXAMPLE.COM"]
    results = post_burst(url, [variants[i % 3] for i in range(30)])
    assert_one_signup(runtime, results, "mixed.case@example.com")
    with runtime.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Subscriber)) == 2
        assert s.scalar(select(func.count()).select_from(Enrollment)) == 2
        assert s.scalar(select(func.count()).select_from(Consent)) == 2

    assert drip.tick()["sent"] == 2
    welcome = runtime.campaigns[CAMPAIGN].steps[0].subject
    assert received(smtp) == Counter({("dup@example.com", welcome): 1, ("mixed.case@example.com", welcome): 1})


@pytest.mark.slow
def test_three_processes_tick_the_same_database(backend: str, drip: Drip, runtime, smtp) -> None:
    """Three `drip tick` processes racing over 320 readers for three steps send every step to every reader once
    (FOR UPDATE SKIP LOCKED on PostgreSQL; one writer at a time on SQLite)."""
    readers = 320
    addresses = seed(runtime, readers, T0)
    steps = runtime.campaigns[CAMPAIGN].steps[:3]
    rounds = [T0, T0 + timedelta(days=8), T0 + timedelta(days=16)]

    for n, now in enumerate(rounds):
        procs = [drip.start_tick(now, DRIP_BATCH_SIZE=25) for _ in range(3)]
        for proc in procs:
            proc.wait()
        summaries = [proc.summary() for proc in procs]
        assert sum(s["queued"] for s in summaries) == readers, summaries
        assert sum(s["sent"] for s in summaries) == readers, summaries
        assert sum(s["reclaimed"] + s["deferred"] + s["failed"] for s in summaries) == 0, summaries
        got = received(smtp)
        assert sum(got.values()) == readers * (n + 1)
        assert {a for (a, subject), c in got.items() if subject == steps[n].subject and c == 1} == set(addresses)

    expected = Counter({(a, step.subject): 1 for a in addresses for step in steps})
    assert received(smtp) == expected
    with runtime.sessions() as s:
        rows = s.execute(select(Message.enrollment_id, Message.step_key, Message.status, Message.claimed_by)).all()
    assert len(rows) == readers * len(steps)
    assert {status for _e, _k, status, _w in rows} == {"sent"}
    per_step = Counter((enrollment_id, step_key) for enrollment_id, step_key, _s, _w in rows)
    assert set(per_step.values()) == {1}
    assert {key for _e, key in per_step} == {step.key for step in steps}
    # The claims really interleaved: more than one process sent something.
    assert len({worker for *_rest, worker in rows}) > 1


@pytest.mark.slow
def test_sigkilled_worker_loses_nothing(drip: Drip, runtime, smtp) -> None:
    """A tick SIGKILLed mid-pass leaves leased rows that the next pass reclaims: nobody is skipped, and only
    the emails handed to SMTP but not yet recorded can go out twice, each with a 'reclaimed' event."""
    addresses = seed(runtime, 40, T0)
    smtp.handler.data_delay = 0.05
    proc = drip.start_tick(T0, DRIP_LEASE_SECONDS=5)
    deadline = time.monotonic() + 30
    while len(smtp.handler.accepted) < 10:
        if proc.popen.poll() is not None:
            pytest.fail(f"the tick ended before it could be killed:\n{proc.output()}")
        assert time.monotonic() < deadline, f"the SMTP server accepted too few messages:\n{proc.output()}"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    assert proc.wait(timeout=10, check=False) == -signal.SIGKILL
    time.sleep(0.3)  # let a DATA the server was still sleeping on finish
    smtp.handler.data_delay = 0.0

    accepted_at_kill = {addr for (addr, _subject) in received(smtp)}
    with runtime.sessions() as s:
        recorded_sent = {m.to_email.lower() for m in s.scalars(select(Message).where(Message.status == "sent"))}
    at_kill = message_statuses(runtime)
    assert at_kill["sending"] > 0, at_kill
    assert set(at_kill) <= {"sent", "sending"}, at_kill
    assert recorded_sent <= accepted_at_kill
    handed_not_recorded = accepted_at_kill - recorded_sent

    assert drip.tick(T0 + timedelta(minutes=2), DRIP_LEASE_SECONDS=5)["reclaimed"] == 0  # leases still held
    time.sleep(max(0.0, 5.5 - (time.monotonic() - killed_at)))  # leases run on the real clock
    summary = drip.tick(T0 + timedelta(minutes=2), DRIP_LEASE_SECONDS=5)
    assert summary["reclaimed"] == at_kill["sending"], summary

    welcome = runtime.campaigns[CAMPAIGN].steps[0].subject
    got = received(smtp)
    assert {addr for (addr, subject) in got if subject == welcome} == set(addresses)
    assert message_statuses(runtime) == Counter({"sent": len(addresses)})
    duplicated = {addr for (addr, _subject), count in got.items() if count > 1}
    assert duplicated <= handed_not_recorded, (duplicated, handed_not_recorded)
    assert sum(got.values()) - len(addresses) <= 5
    with runtime.sessions() as s:
        reclaimed = set(s.scalars(
            select(func.lower(Message.to_email)).join(Event, Event.message_id == Message.id)
            .where(Event.type == "reclaimed")))
    assert duplicated <= reclaimed


@pytest.mark.slow
def test_smtp_down_then_back(drip: Drip, runtime, smtp) -> None:
    """With the SMTP server down a tick defers the welcome (the reader stays active); once it is back the
    next tick sends it, exactly once."""
    smtp.stop()
    [address] = seed(runtime, 1, T0, prefix="patient")

    assert drip.tick(T0)["deferred"] == 1
    with runtime.sessions() as s:
        message = s.scalars(select(Message)).one()
        assert (message.status, message.attempts) == ("deferred", 0)  # the outage is not counted against the reader
        assert "connect" in (message.last_error or "").lower(), message.last_error
        assert s.scalars(select(Subscriber)).one().status == "active"
        assert s.scalars(select(Enrollment)).one().status == "active"

    smtp.start()
    assert drip.tick(T0 + timedelta(hours=1))["sent"] == 1
    with runtime.sessions() as s:
        message = s.scalars(select(Message)).one()
        assert (message.status, message.attempts) == ("sent", 1)
    welcome = runtime.campaigns[CAMPAIGN].steps[0].subject
    assert received(smtp) == Counter({(address, welcome): 1})


@pytest.mark.slow
def test_a_slow_live_worker_keeps_its_lease(drip: Drip, runtime, smtp) -> None:
    """A worker still sending past its lease renews it, so a second worker never takes over and re-sends."""
    seed(runtime, 30, datetime.now(UTC) - timedelta(minutes=1), prefix="slow")
    smtp.handler.data_delay = 0.25  # the first pass takes ~7.5 s against a 5 s lease
    first = drip.start_tick(DRIP_LEASE_SECONDS=5)
    time.sleep(6.5)
    second = drip.tick(DRIP_LEASE_SECONDS=5)
    first.wait()
    assert second["reclaimed"] == 0 and second["sent"] == 0
    counts = received(smtp)
    assert len(counts) == 30 and set(counts.values()) == {1}
    assert message_statuses(runtime) == Counter({"sent": 30})


def test_sigterm_to_drip_serve_finishes_the_batch_and_records_it(drip: Drip, runtime, smtp) -> None:
    """`drip serve` stopped mid-pass (SIGTERM, as systemd or a deploy does): like `drip worker`, the pass
    finishes the batch it holds, records every outcome and claims no more before the process exits; the
    rest waits, queued, for the next start. Nothing is left `sending` to be re-sent after its lease."""
    addresses = seed(runtime, 12, T0 - timedelta(minutes=1), prefix="serve")
    smtp.handler.data_delay = 0.25  # about 1 s per batch of 4
    proc = drip.start("serve", "--host", "127.0.0.1", "--port", str(drip.port), DRIP_BATCH_SIZE=4)
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while len(smtp.handler.accepted) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(smtp.handler.accepted) >= 2, proc.output()
    proc.popen.terminate()
    proc.wait(timeout=30, check=False)
    assert len(smtp.handler.accepted) == 4 < len(addresses), proc.output()
    assert message_statuses(runtime) == Counter({"sent": 4, "queued": 8}), proc.output()


def _listening_sockets(port: int) -> int:
    """LISTEN sockets on 127.0.0.1:port in this network namespace (/proc/net/tcp, state 0A)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[1] == f"0100007F:{port:04X}" and row.split()[3] == "0A")


@pytest.mark.slow
def test_web_workers_each_listen_and_keepalive_connections_move_on(drip: Drip) -> None:
    """`drip web --workers 2`: each worker has its own listening socket (the kernel spreads connections
    over them), a keep-alive connection is closed after its 100th request so a client's connections
    spread again, and a second `drip web` on the same port is refused instead of sharing it."""
    import http.client

    drip.web(workers=2)
    deadline = time.monotonic() + 20
    while _listening_sockets(drip.port) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _listening_sockets(drip.port) == 2

    conn = http.client.HTTPConnection("127.0.0.1", drip.port, timeout=10)
    for n in range(1, 101):
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        assert (response.getheader("Connection", "").lower() == "close") is (n == 100), n
    conn.close()

    second = drip.start("web", "--host", "127.0.0.1", "--port", str(drip.port), "--workers", "1")
    assert second.wait(timeout=30, check=False) != 0
    assert "cannot listen on 127.0.0.1" in second.output()


@pytest.mark.postgresql_only  # SQLite has one writer at a time: nothing there can deadlock
def test_starts_passes_and_pauses_lock_the_campaign_rows_without_deadlock(backend, runtime) -> None:
    """What several workers and an operator do to the campaign_states rows at the same moment: a start
    records the templates that compiled (its campaigns in any order), a pass checks for edited steps, the
    console pauses and resumes a campaign. Four threads do these 25 times each, each its own transaction;
    none fails (PostgreSQL detected a deadlock here when they locked the rows in different orders)."""
    from service.campaigns import template_marks
    from service.enrollment.live_edits import changed_since_checked
    from service.operator.campaign_stats import set_paused

    keys = sorted(runtime.campaigns)
    assert len(keys) >= 3
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(25):
                with runtime.sessions() as s, s.begin():
                    order = keys if (n + i) % 2 else keys[::-1]
                    if i % 3 == 0:
                        template_marks.record(s, {k: f"digest-{n}-{i}" for k in order}, now=T0)
                    elif i % 3 == 1:
                        changed_since_checked(s, {k: runtime.campaigns[k] for k in order}, T0)
                    else:
                        set_paused(s, order[0], bool(i % 2), now=T0)
        except BaseException as exc:  # reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert failures == []


def test_one_transaction_cannot_lock_campaign_rows_out_of_order(runtime) -> None:
    """The order is kept within a transaction too: after the rows of "b" and "d" are locked, a second call
    may add "e" (it sorts after them) and repeat "b", but "a" or "c" would be locked out of order, so
    they are refused before anything is locked. The next transaction starts afresh."""
    from service.campaigns import states

    with runtime.sessions() as s, s.begin():
        assert sorted(states.locked(s, ["d", "b"], now=T0)) == ["b", "d"]
        assert sorted(states.locked(s, ["b", "e"], now=T0)) == ["b", "e"]
        for late in (["a"], ["c", "e"]):
            with pytest.raises(RuntimeError, match="take every row in one call"):
                states.locked(s, late, now=T0)
    with runtime.sessions() as s, s.begin():
        assert sorted(states.locked(s, ["a", "c"], now=T0)) == ["a", "c"]
        assert s.scalar(select(func.count()).select_from(CampaignState)) >= 5
