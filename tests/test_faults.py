"""Faults survived: PostgreSQL connections killed mid-pass, SMTP dropping the connection mid-DATA,
hanging, answering 421, an unwritable outbox, a web worker SIGKILLed during signups, clock jumps, and a
campaign file edited under running workers. Each ends with nothing lost and nothing sent twice beyond the
documented in-flight window. Real PostgreSQL, real SMTP servers, real processes; nothing mocked."""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from test_concurrency import CAMPAIGN, HTTP, T0, Drip, message_statuses, received, seed

from service.core.models import Consent, Enrollment, Event, Message, Subscriber
from service.dispatch.policy import PassSummary
from service.runtime import build_runtime


def sent_once_each(smtp, addresses: list[str], subject: str) -> None:
    got = received(smtp)
    assert {a: got[(a, subject)] for a in addresses} == {a: 1 for a in addresses}


# -- PostgreSQL ------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.postgresql_only  # pg_terminate_backend needs the server; SQLite has no connection to lose
def test_postgres_connections_killed_mid_pass(backend: str, database_url: str, smtp, tmp_path: Path,
                                              runtime) -> None:
    """pg_terminate_backend on every connection of a running `drip worker` mid-pass (as a PostgreSQL restart
    does): a pass caught inside a transaction fails and is logged, a dead idle connection is replaced at
    checkout (pool_pre_ping); the worker never dies, and in the end every
    reader has the welcome; nothing was recorded sent that the SMTP server had not accepted, and the only
    repeats are messages handed to SMTP but unrecorded when the connection died, each with a 'reclaimed' event."""
    addresses = seed(runtime, 30, datetime.now(UTC) - timedelta(minutes=1), prefix="pgkill")
    smtp.handler.data_delay = 0.1
    drip = Drip(database_url, smtp.url, tmp_path)
    worker = drip.start("worker", DRIP_TICK_SECONDS=1, DRIP_LEASE_SECONDS=5)
    try:
        deadline = time.monotonic() + 30
        while len(smtp.handler.accepted) < 5:
            assert time.monotonic() < deadline, worker.output()
            time.sleep(0.02)
        # Kill every connection of the test database again and again for 2 s, so some die between
        # transactions (pool_pre_ping replaces them) and some inside one (that pass fails; the next reclaims).
        admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
        killed, until = 0, time.monotonic() + 2
        with admin.connect() as conn:
            while time.monotonic() < until:
                killed += conn.execute(text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
                time.sleep(0.03)
        admin.dispose()
        assert killed >= 1
        smtp.handler.data_delay = 0.0
        deadline = time.monotonic() + 60
        while message_statuses(runtime) != Counter({"sent": len(addresses)}):
            assert worker.popen.poll() is None, f"the worker died:\n{worker.output()}"
            assert time.monotonic() < deadline, f"{message_statuses(runtime)}\n{worker.output()}"
            time.sleep(0.2)
    finally:
        drip.stop_all()
    print(f"connections killed: {killed}; failed passes: {worker.output().count('dispatch pass failed')}")
    welcome = runtime.campaigns[CAMPAIGN].steps[0].subject
    got = received(smtp)
    assert {a for (a, s) in got if s == welcome} == set(addresses)  # nothing lost
    doubled = {a for (a, _s), n in got.items() if n > 1}
    with runtime.sessions() as s:
        reclaimed = set(s.scalars(select(func.lower(Message.to_email)).join(Event, Event.message_id == Message.id)
                                  .where(Event.type == "reclaimed")))
    assert doubled <= reclaimed, (doubled, reclaimed)
    assert len(doubled) <= 5


# -- SMTP faults -----------------------------------------------------------------------------------------
class RawSmtp:
    """A raw socket SMTP server with one bad habit: 'drop' closes the connection after reading DATA,
    'hang' accepts and never says a word."""

    def __init__(self, mode: str) -> None:
        self.mode, self.sock = mode, socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.data_received = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.mode == "drop":
                threading.Thread(target=self._drop_after_data, args=(conn,), daemon=True).start()

    def _drop_after_data(self, conn: socket.socket) -> None:
        f = conn.makefile("rwb")
        f.write(b"220 raw ESMTP\r\n")
        f.flush()
        for line in f:
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                f.write(b"250 raw\r\n")
            elif verb == b"DATA":
                f.write(b"354 go ahead\r\n")
                f.flush()
                for body in f:
                    if body == b".\r\n":
                        break
                self.data_received += 1
                conn.shutdown(socket.SHUT_RDWR)  # the whole message read, no reply: the worst moment
                conn.close()
                return
            else:
                f.write(b"250 ok\r\n")
            f.flush()

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.mark.parametrize("mode", ["drop", "hang", "421"])
def test_smtp_faults_defer_then_send_once(runtime, smtp, mode: str) -> None:
    """A server that drops the connection after DATA, hangs past the timeout, or answers 421 leaves the
    welcome deferred (not sent, not bounced, reader still active); the next pass against a healthy server
    sends it once."""
    [address] = seed(runtime, 1, T0, prefix=f"smtp{mode}")
    bad = None
    if mode == "421":
        smtp.handler.script(address, "DATA", "421 4.3.2 Service shutting down")
        rt = runtime
    else:
        bad = RawSmtp(mode)
        rt = build_runtime(replace(runtime.settings, email_url=f"smtp://127.0.0.1:{bad.port}?timeout=1"))
    try:
        started = time.monotonic()
        summary = rt.dispatcher().run_pass(now=T0)
        assert time.monotonic() - started < 15
    finally:
        if bad is not None:
            bad.close()
    assert (summary.sent, summary.deferred, summary.bounced) == (0, 1, 0), summary
    if mode == "drop":
        assert bad.data_received == 1  # the server had the whole message but never said 250
    with runtime.sessions() as s:
        m = s.scalars(select(Message)).one()
        # A hang at connect is the relay's failure, not the reader's: that attempt is not counted.
        assert (m.status, m.attempts) == ("deferred", 0 if mode == "hang" else 1) and m.last_error
        assert s.scalars(select(Subscriber)).one().status == "active"
    assert runtime.dispatcher().run_pass(now=T0 + timedelta(hours=2)).sent == 1
    sent_once_each(smtp, [address], runtime.campaigns[CAMPAIGN].steps[0].subject)


# -- the file transport ----------------------------------------------------------------------------------
def test_unusable_outbox_defers_then_delivers(runtime, tmp_path: Path) -> None:
    """DRIP_EMAIL_URL naming a folder that cannot be created (a file stands there) defers the welcome; once
    the folder is usable the next pass writes it, once."""
    blocker = tmp_path / "outbox"
    blocker.write_text("not a folder")
    rt = build_runtime(replace(runtime.settings, email_url=f"file://{blocker}"))
    seed(rt, 1, T0, prefix="disk")
    summary = rt.dispatcher().run_pass(now=T0)
    assert (summary.sent, summary.deferred) == (0, 1), summary
    with rt.sessions() as s:
        assert "outbox" in s.scalars(select(Message)).one().last_error
    blocker.unlink()
    assert rt.dispatcher().run_pass(now=T0 + timedelta(hours=2)).sent == 1
    assert len(list(blocker.glob("*.eml"))) == 1 and not list(blocker.glob("*.tmp"))


DISK_FULL = r"""
import resource, sys
from pathlib import Path
from service.transports.file import FileTransport
from service.transports.base import OutboundEmail
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # like a full disk: writes past 4 KiB fail (EFBIG)
raw = b"Subject: big\r\n\r\n" + b"x" * 20000
item = OutboundEmail(message_pk=7, envelope_from="a@example.org", recipient="b@example.org", from_header="a",
                     to_header="b", subject="big", text="", html="", headers=(), raw=raw)
[result] = FileTransport(Path(sys.argv[1])).send([item])
print(result.ok, result.permanent, result.error)
"""


def test_disk_full_mid_write_is_transient_and_leaves_no_partial_file(tmp_path: Path) -> None:
    """With the file size limit below the email's size (the process sees EFBIG, as on a full disk), the file
    transport reports a transient failure (retried later, not lost) and leaves no half-written file."""
    out = subprocess.run([sys.executable, "-c", DISK_FULL, str(tmp_path / "box")], capture_output=True, text=True,
                         timeout=60, check=True, cwd=Path(__file__).resolve().parent.parent)
    ok, permanent, error = out.stdout.strip().split(" ", 2)
    assert (ok, permanent) == ("False", "False") and "cannot write" in error
    assert list((tmp_path / "box").iterdir()) == []
    assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] != 4096  # the limit stayed in the child


# -- the web process killed during signups -----------------------------------------------------------------
def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.mark.slow
def test_web_worker_sigkilled_during_signups(database_url: str, smtp, tmp_path: Path, runtime) -> None:
    """While 8 clients stream signups, a gunicorn worker of `drip web` is SIGKILLed twice. Clients see
    successes or errors, never a half-written subscriber: every 201 is in the database, and every subscriber
    that exists has exactly one enrollment and one consent."""
    drip = Drip(database_url, smtp.url, tmp_path)
    drip.env["DRIP_SIGNUP_ADDRESS_RATE_LIMIT"] = "off"
    web = drip.web(workers=2)
    accepted: list[str] = []
    failures: Counter[str] = Counter()
    stop = threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            address = f"k{n}-{i}@example.org"
            i += 1
            req = urllib.request.Request(f"{drip.base_url}/signup", data=json.dumps({"email": address}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
            try:
                with HTTP.open(req, timeout=10) as r:
                    if r.status == 201:
                        accepted.append(address)
            except urllib.error.HTTPError as exc:
                failures[str(exc.code)] += 1
            except OSError as exc:
                failures[type(exc).__name__] += 1

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(8)]
    try:
        for t in threads:
            t.start()
        for _ in range(2):
            time.sleep(1.5)
            victims = _children(web.pid)
            assert victims, "gunicorn has no workers"
            os.kill(victims[0], signal.SIGKILL)
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
        drip.stop_all()
    assert len(accepted) > 20, (len(accepted), failures)
    assert not any(code.startswith("5") and code != "502" for code in failures), failures
    with runtime.sessions() as s:
        stored = set(s.scalars(select(Subscriber.email_key)))
        enrollments = Counter(s.scalars(select(Enrollment.subscriber_id)))
        consents = Counter(s.scalars(select(Consent.subscriber_id)))
        ids = set(s.scalars(select(Subscriber.id)))
    assert set(accepted) <= stored
    assert set(enrollments) == ids == set(consents)
    assert set(enrollments.values()) == {1} and set(consents.values()) == {1}


# -- clock jumps -----------------------------------------------------------------------------------------
def test_clock_jumps_back_and_far_forward(runtime, smtp) -> None:
    """Passes whose clock goes back a week and then a year forward send every step once, in order: going back
    sends nothing again, jumping forward sends the next step only (not a burst of missed weeks)."""
    addresses = seed(runtime, 3, T0, prefix="clock")
    steps = runtime.campaigns[CAMPAIGN].steps
    d = runtime.dispatcher()
    assert d.run_pass(now=T0).sent == 3
    assert d.run_pass(now=T0 + timedelta(days=8)).sent == 3          # week 1
    assert d.run_pass(now=T0 - timedelta(days=7)).sent == 0          # clock went back: nothing again
    assert d.run_pass(now=T0 + timedelta(days=8)).sent == 0          # back to normal: already done
    far = T0 + timedelta(days=365)
    assert d.run_pass(now=far).sent == 3                              # one step, not a year's worth
    assert d.run_pass(now=far).sent == 0
    assert d.run_pass(now=far - timedelta(days=300)).sent == 0       # and back again
    for k in range(1, len(steps)):
        d.run_pass(now=far + timedelta(days=8 * k))
    for step in steps:
        sent_once_each(smtp, addresses, step.subject)
    with runtime.sessions() as s:
        order = s.execute(select(Message.to_email, Message.step_index).order_by(Message.id)).all()
    for a in addresses:
        assert [i for e, i in order if e == a] == list(range(len(steps)))


# -- campaign file edited under running workers ----------------------------------------------------------
def test_campaign_edited_while_workers_run(runtime, smtp, tmp_path: Path) -> None:
    """A worker keeps the campaign it loaded when the file changes; a worker started after a step was
    renamed fails that step's queued message visibly ('no longer exists') and carries on with the next."""
    templates = tmp_path / "templates"
    shutil.copytree(runtime.settings.templates_dir, templates)
    for other in templates.iterdir():  # only the edited campaign: lead magnets continue into its week-01
        if other.is_dir() and other.name not in (CAMPAIGN, "_base", "monthly-newsletter"):
            shutil.rmtree(other)
    old = build_runtime(replace(runtime.settings, templates_dir=templates))
    addresses = seed(old, 2, T0, prefix="edit")
    assert old.dispatcher().run_pass(now=T0).sent == 2                 # welcome
    toml = templates / CAMPAIGN / "campaign.toml"
    toml.write_text(toml.read_text().replace('key = "week-01"', 'key = "week-01-renamed"'))
    new = build_runtime(replace(runtime.settings, templates_dir=templates))
    assert old.campaigns[CAMPAIGN].steps[1].key == "week-01"            # the running worker's copy is untouched
    # The old worker queues week-01 for the first reader only (claimed by nobody yet) ...
    d_old = old.dispatcher(batch_size=1)
    d_old.queue_due(T0 + timedelta(days=8), PassSummary())
    summary = new.dispatcher().run_pass(now=T0 + timedelta(days=8))  # ... the new worker meets it
    assert summary.failed >= 1, summary
    with runtime.sessions() as s:
        failed = s.scalars(select(Message).where(Message.status == "failed")).all()
        assert failed and all("no longer exists" in (m.last_error or "") or
                              s.scalar(select(func.count()).select_from(Event).where(
                                  Event.message_id == m.id, Event.detail.like("%no longer exists%")))
                              for m in failed)
    # Nobody is stuck: a rename is a removed step plus a new one (docs/campaigns.md), so the first reader
    # gets the renamed step next; within two more weeks week-02 has gone out to both readers, once.
    for day in (17, 25, 33):
        new.dispatcher().run_pass(now=T0 + timedelta(days=day))
    sent_once_each(smtp, addresses, runtime.campaigns[CAMPAIGN].steps[2].subject)


@pytest.mark.parametrize("code", [535, 454])
def test_smtp_login_refused_pauses_sending_or_waits(runtime, code: int) -> None:
    """A relay refusing our credentials (535) pauses sending, like a provider's 401: no attempt counted,
    the welcome waits; once the operator resumes, with the credentials right, it goes out once. A
    temporary refusal (454) only defers the batch."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult
    from conftest import SmtpRecorder, free_port

    from service.audience.signups import ConsentMeta, parse_signup, signup
    from service.dispatch import sending_pause as sending

    accept = {"ok": False}

    def check(server, session, envelope, mechanism, auth_data):
        if accept["ok"]:
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False, message=f"{code} 4.7.0 nope" if code < 500
                          else "535 5.7.8 Authentication credentials invalid")

    recorder, port = SmtpRecorder(), free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port, authenticator=check, auth_required=True,
                            auth_require_tls=False)
    controller.start()
    try:
        rt = build_runtime(replace(runtime.settings,
                                   email_url=f"smtp://drip:secret@127.0.0.1:{port}?timeout=5&plain_auth=true"))
        data = parse_signup({"email": "ada@example.org"}, campaigns=rt.campaigns, default_campaign=CAMPAIGN)
        with rt.sessions() as s, s.begin():
            signup(s, data, campaign=rt.campaigns[CAMPAIGN], meta=ConsentMeta("json"), now=T0)
        summary = rt.dispatcher().run_pass(T0)
        with rt.sessions() as s:
            message = s.scalars(select(Message)).one()
            reason = sending.paused_reason(s)
        assert (message.status, message.attempts, recorder.accepted) == ("deferred", 0, [])
        if code == 454:
            assert (summary.paused, reason) == (0, None)
            return
        assert summary.paused == 1 and "authentication" in (reason or "").lower()
        accept["ok"] = True
        assert rt.dispatcher().run_pass(T0 + timedelta(hours=1)).sent == 0  # still paused: nothing claimed
        with rt.sessions() as s, s.begin():
            sending.resume(s, now=T0)
        assert rt.dispatcher().run_pass(T0 + timedelta(hours=1)).sent == 1
        assert [r for _f, rcpts, _raw in recorder.accepted for r in rcpts] == ["ada@example.org"]
    finally:
        controller.stop()
