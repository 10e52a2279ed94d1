"""Runs the app under gunicorn from code, for `drip web` and `drip serve`.

Only `drip serve` (one worker process) starts a scheduler, inside that worker after the fork: a
scheduler thread does not survive a fork, and one per worker would send every email N times.
"""
from __future__ import annotations

import logging
import socket

from gunicorn.app.base import BaseApplication
from gunicorn.util import parse_address

from service.core import inputs
from service.core.config import Settings

log = logging.getLogger(__name__)


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings, options: dict, with_scheduler: bool) -> None:
        self.settings = settings
        self.options = options
        self.with_scheduler = with_scheduler
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        self.cfg.set("worker_exit", self._worker_exit)

    _stop_scheduler = None

    def _worker_exit(self, _server, _worker) -> None:
        """In the worker, after SIGTERM and the last request: like `drip worker`, the pass in progress
        claims nothing more, finishes the batch it holds and records every outcome before the process
        exits (within gunicorn's graceful_timeout); otherwise the scheduler thread would die mid-pass,
        leaving claimed rows to their lease and accepted emails unrecorded."""
        if self._stop_scheduler is not None:
            self._stop_scheduler()

    def load(self):
        from service.app import create_app
        from service.runtime import build_runtime

        runtime = build_runtime(self.settings, pool_size=self.options.get("threads", 4) + 1)
        wake = None
        if self.with_scheduler:
            from service.scheduler import start_background

            dispatcher = runtime.dispatcher()
            scheduler, wake = start_background(dispatcher, self.settings.tick_seconds)
            log.info("scheduler started: a pass every %ss", self.settings.tick_seconds)

            def stop() -> None:
                log.info("stopping: finishing the current batch")
                dispatcher.stopping.set()
                scheduler.shutdown(wait=True)
            self._stop_scheduler = stop
        return create_app(runtime=runtime, wake=wake)


def default_threads(database_url: str) -> int:
    """Threads per `drip web` worker. PostgreSQL: 4, so a worker keeps its core busy while requests wait
    on the database. SQLite: 1. It takes one writer at a time, so more threads in a process only queue
    on its lock, and while holding it they wait for the GIL at every statement; measured with
    bench/signup.py on this 2-core machine, one thread spent about a tenth less CPU per signup and cut
    the p99, for the same throughput (docs/performance.md). `drip web --threads N` overrides this."""
    return 1 if database_url.startswith("sqlite") else 4


# With two workers or more, each listens on its own socket (SO_REUSEPORT) and the kernel spreads new
# connections over them; on one shared socket the worker that happens to be awake takes them, often all
# of a client's. The price: connections still waiting in a worker's own queue when it exits (a HUP
# reload, a crash) are reset, unless the host sets net.ipv4.tcp_migrate_req=1 (Linux 5.14+), which hands
# them to the other workers (docs/operations.md). One worker (`drip serve`) keeps gunicorn's shared socket.
# Requests one keep-alive connection may carry before the answer says "Connection: close" (Apache's
# MaxKeepAliveRequests default; nginx's keepalive_requests is the same idea). gunicorn has no such limit:
# a client that keeps a few connections open (a site's backend posting signups through a connection
# pool, a load generator) stays on whichever worker accepted them first, and with gunicorn's shared
# listening socket that is often one worker for all of them, the other idle. Reconnecting every hundred
# requests lets the connections spread over the workers again, for one TCP handshake per hundred requests.
KEEPALIVE_REQUESTS = 100


def _close_after_keepalive_limit(_worker, req) -> None:
    """gunicorn's pre_request hook: the response to a connection's 100th request closes it."""
    if req.req_number >= KEEPALIVE_REQUESTS:
        req.must_close = True


def gunicorn_options(*, host: str, port: int, workers: int, threads: int) -> dict:
    """The gunicorn settings of `drip web` and `drip serve`. bench/ceiling_app.py runs under exactly
    these too, so the signup bench compares like with like."""
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        # gunicorn's threaded worker, reading each request whole before a thread takes it, so stalled
        # clients hold sockets, never threads (service/buffered_worker.py).
        "worker_class": "service.buffered_worker.BufferingThreadWorker",
        "threads": threads,
        "timeout": 60,
        "graceful_timeout": 20,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "limit_request_line": 8190,
        "limit_request_fields": inputs.MAX_HEADER_FIELDS,
        "limit_request_field_size": inputs.MAX_HEADER_FIELD_BYTES,
        "control_socket_disable": True,
        "pre_request": _close_after_keepalive_limit,
        "reuse_port": workers > 1,
    }


def _refuse_a_taken_port(host: str, port: int) -> None:
    """With SO_REUSEPORT a second `drip web` on the same port would bind too and silently take half the
    connections; a plain bind first fails as it always did ("address already in use"). The host as
    gunicorn reads it (`[::1]` for IPv6); a name that does not resolve is left for gunicorn to report."""
    host, port = parse_address(f"{host}:{port}")
    try:
        family, _type, _proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror:
        return
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # like gunicorn: TIME_WAIT is no owner
        try:
            probe.bind(address)
        except OSError as exc:
            raise SystemExit(f"drip: cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def run_gunicorn(settings: Settings, *, host: str, port: int, workers: int, threads: int,
                 with_scheduler: bool) -> None:
    if with_scheduler and workers != 1:
        raise ValueError("a scheduler runs in exactly one process")
    _refuse_a_taken_port(host, port)
    options = gunicorn_options(host=host, port=port, workers=workers, threads=threads)
    _Gunicorn(settings, options, with_scheduler).run()
