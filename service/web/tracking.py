"""Open pixel and click redirect (only used when DRIP_TRACKING=on wrote them into emails).

`GET /t/o/<token>.gif` records an open and answers a 1x1 GIF. `GET /t/c/<token>` records a click and
redirects to the URL signed inside the token, and only there: a token that does not verify gets 400
and no redirect. Query parameters are ignored, so `?url=` cannot steer the redirect.
"""
from __future__ import annotations

import base64
import logging

from flask import Blueprint, Response, redirect

from service.compose.tracking import BadTrackingToken, read_click, read_open
from service.core.db import utcnow
from service.feedback.delivery import DeliveryEvent, apply
from service.web import db, runtime

log = logging.getLogger(__name__)
bp = Blueprint("tracking", __name__)
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


def _record(kind: str, message_pk: int, url: str | None = None) -> None:
    session = db()
    apply(session, DeliveryEvent(kind, source="tracking", message_pk=message_pk, data={"url": url} if url else {}),
          now=utcnow(), policy=runtime().delivery_policy())
    session.commit()


@bp.get("/t/o/<token>.gif")
def opened(token: str):
    try:
        _record("open", read_open(runtime().settings.secret_key, token))
    except BadTrackingToken:
        pass  # still a pixel: a mail client shows nothing either way
    return Response(GIF, mimetype="image/gif", headers={"Cache-Control": "no-store"})


@bp.get("/t/c/<token>")
def clicked(token: str):
    try:
        message_pk, url = read_click(runtime().settings.secret_key, token)
    except BadTrackingToken:
        return Response("This link is not valid.", status=400, mimetype="text/plain")
    _record("click", message_pk, url)
    return redirect(url, code=302)
