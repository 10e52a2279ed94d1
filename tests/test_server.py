"""`drip web` / `drip serve` under gunicorn: the port check and the listening-socket choice."""
from __future__ import annotations

import socket

import pytest

from service.server import _refuse_a_taken_port, gunicorn_options


@pytest.mark.parametrize(("family", "host", "shown"), [(socket.AF_INET, "127.0.0.1", "127.0.0.1"),
                                                        (socket.AF_INET6, "[::1]", "::1")])
def test_a_port_in_use_is_refused_and_a_free_one_accepted(family: int, host: str, shown: str) -> None:
    """A port another program listens on is refused with a clear message, for IPv4 and for gunicorn's
    bracketed IPv6 form; once it is free the same check passes."""
    with socket.socket(family, socket.SOCK_STREAM) as taken:
        taken.bind((shown, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=f"cannot listen on {shown}:{port}: Address already in use"):
            _refuse_a_taken_port(host, port)
    _refuse_a_taken_port(host, port)


def test_one_worker_keeps_the_shared_socket() -> None:
    """Per-worker sockets only with two workers or more: with one (`drip serve`), a restart of that
    worker must not reset the connections waiting for it."""
    assert gunicorn_options(host="127.0.0.1", port=1, workers=1, threads=4)["reuse_port"] is False
    assert gunicorn_options(host="127.0.0.1", port=1, workers=2, threads=4)["reuse_port"] is True
