"""APScheduler only triggers passes; the database decides who sends what.

One interval job, `max_instances=1`, `coalesce=True`, in-memory job store. Missed runs are never
"made up": each pass computes what is due from the database, so downtime is caught up on the next one.
A second job, once a minute in its own thread, stores the console's forecast when it is stale
(operator/forecast.py `refresh`): on a large list the replay takes minutes, and a pass must not wait for it.
"""
from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

from service.core.db import utcnow
from service.dispatch.dispatcher import Dispatcher
from service.operator import forecast

log = logging.getLogger(__name__)
JOB_ID = "dispatch-pass"
FORECAST_JOB_ID = "forecast"
FORECAST_CHECK_SECONDS = 60


class PassRunner:
    """The job: one dispatch pass, logged; an error is logged and the next tick tries again.

    Wakes (a signup wants its welcome now) are coalesced: a burst of signups asks the scheduler for one
    run, not one each, and a wake that arrives while a pass runs (too late for that pass's query) gets
    one more pass right after it instead of waiting for the next tick.
    """

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.running = threading.Event()
        self._lock = threading.Lock()
        self._again = False  # a wake arrived during a pass
        self._asked = False  # a wake already asked the scheduler for a run that has not started yet

    def __call__(self) -> None:
        with self._lock:
            self._asked = False
            self.running.set()
        while True:
            self._one_pass()
            with self._lock:
                if not self._again:
                    self.running.clear()
                    return
                self._again = False

    def _one_pass(self) -> None:
        try:
            summary = self.dispatcher.run_pass()
            if summary.queued or summary.sent or summary.deferred or summary.failed or summary.bounced:
                log.info("pass: %s", summary.line())
        except Exception:
            log.exception("dispatch pass failed; the next tick retries")

    def wake(self) -> bool:
        """Notes a wake; True when the caller should ask the scheduler for a run now."""
        with self._lock:
            if self.running.is_set():
                self._again = True
                return False
            if self._asked:
                return False
            self._asked = True
            return True


def refresh_forecast(dispatcher: Dispatcher) -> None:
    """The forecast job: computes and stores the forecast when it is stale; an error waits for the next run."""
    try:
        done = forecast.refresh(dispatcher, dispatcher.sessions, now=utcnow())
        if done is not None:
            log.info("forecast stored: %d email(s) in the next %d days", len(done.emails),
                     (done.end - done.start).days)
    except Exception:
        log.exception("computing the forecast failed; the next run tries again")


def _add_job(scheduler, runner: PassRunner, seconds: float) -> None:
    scheduler.add_job(runner, "interval", seconds=seconds, id=JOB_ID, max_instances=1, coalesce=True,
                      misfire_grace_time=None, next_run_time=datetime.now(UTC))
    scheduler.add_job(refresh_forecast, "interval", args=(runner.dispatcher,), seconds=FORECAST_CHECK_SECONDS,
                      id=FORECAST_JOB_ID, max_instances=1, coalesce=True, misfire_grace_time=None)


def start_background(dispatcher: Dispatcher, seconds: float) -> tuple[BackgroundScheduler, callable]:
    """For `drip serve`: returns the scheduler and a `wake()` that runs a pass now (after a signup)."""
    scheduler = BackgroundScheduler(timezone=UTC)
    runner = PassRunner(dispatcher)
    _add_job(scheduler, runner, seconds)
    scheduler.start()

    def wake() -> None:
        if runner.wake():
            scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC))

    return scheduler, wake


def run_blocking(dispatcher: Dispatcher, seconds: float) -> None:
    """For `drip worker`: runs until SIGTERM/SIGINT, finishing the pass in progress."""
    import signal

    scheduler = BlockingScheduler(timezone=UTC)
    _add_job(scheduler, PassRunner(dispatcher), seconds)

    def stop(signum, _frame):
        log.info("signal %s: finishing the current batch, then stopping", signum)
        dispatcher.stopping.set()  # claim nothing more
        threading.Thread(target=scheduler.shutdown, kwargs={"wait": True}, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    scheduler.start()
