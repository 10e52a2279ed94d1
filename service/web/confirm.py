"""Double opt-in: the confirm link. GET shows a page with a button (mail scanners that fetch
links confirm nothing); POST confirms, and the welcome follows on the next dispatch pass."""
from __future__ import annotations

import logging

from flask import Blueprint, render_template
from sqlalchemy.exc import SQLAlchemyError

from service.audience.optin import confirm
from service.core.db import utcnow
from service.core.tokens import BadToken, read_confirm_token
from service.web import db, runtime

log = logging.getLogger(__name__)
bp = Blueprint("confirm", __name__)


def _claim(token: str):
    rt = runtime()
    try:
        claim = read_confirm_token(rt.settings.secret_key, token, max_age_days=rt.settings.confirm_expiry_days)
    except BadToken:
        return None, None
    return claim, rt.campaigns.get(claim.campaign)


@bp.get("/confirm/<token>")
def confirm_page(token: str):
    claim, campaign = _claim(token)
    if campaign is None:
        return render_template("confirm.html", state="invalid", campaign=None), 404
    return render_template("confirm.html", state="ask", campaign=campaign, token=token)


@bp.post("/confirm/<token>")
def confirm_post(token: str):
    claim, campaign = _claim(token)
    if campaign is None:
        return render_template("confirm.html", state="invalid", campaign=None), 404
    session = db()
    try:
        result = confirm(session, public_id=claim.public_id, campaign=campaign, now=utcnow())
        session.commit()
    except SQLAlchemyError:
        session.rollback()
        log.exception("confirmation failed")
        return render_template("confirm.html", state="error", campaign=campaign), 503
    if result.state == "confirmed":
        from service.web.public import runtime_wake

        runtime_wake()
    status = {"confirmed": 200, "already": 200, "expired": 410, "inactive": 409}[result.state]
    return render_template("confirm.html", state=result.state, campaign=campaign), status
