"""Web layer: thin blueprints that map requests to domain calls and domain errors to status codes."""
from __future__ import annotations

from typing import TYPE_CHECKING

from flask import current_app, g
from sqlalchemy.orm import Session

if TYPE_CHECKING:  # the wiring builds the runtime and hands it to the app; the web layer only reads it
    from service.runtime import Runtime


def runtime() -> Runtime:
    return current_app.extensions["drip"]


def db() -> Session:
    """One session per request, closed at teardown; views commit."""
    if "db" not in g:
        g.db = runtime().sessions()
    return g.db


def wants_json(request) -> bool:
    """JSON bodies, or an Accept header that prefers JSON, get JSON; browsers get pages and redirects."""
    if request.is_json:
        return True
    accept = request.accept_mimetypes
    return accept["application/json"] > accept["text/html"]
