"""Links that ask the reader before anything happens: the double opt-in confirm link, a returning
reader's "come back" link (the same route), and an invitation's "yes" link. GET shows a page with a button
(mail scanners that fetch links confirm nothing); POST acts, and any welcome follows on the next pass."""
from __future__ import annotations

import logging

from flask import Blueprint, render_template, url_for
from sqlalchemy.exc import SQLAlchemyError

from service.audience.optin import INVITATION_BUTTON, accept_invitation, confirm, invitation_target
from service.core.db import utcnow
from service.core.tokens import BadToken, make_view_token, read_confirm_token, read_join_token
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
    if result.state in ("confirmed", "returned"):
        from service.web.public import runtime_wake

        runtime_wake()
    status = {"confirmed": 200, "returned": 200, "already": 200, "expired": 410, "inactive": 409}[result.state]
    earlier = None
    if result.earlier_welcome is not None:  # they had this welcome before: its web copy, not a second send
        earlier = url_for("reader.view_in_browser",
                          token=make_view_token(runtime().settings.secret_key, message_pk=result.earlier_welcome))
    return render_template("confirm.html", state=result.state, campaign=campaign, earlier_welcome=earlier), status


# -- an invitation's "yes": GET asks (scanners join no one), POST joins ------------------------------------
def _join_claim(token: str):
    rt = runtime()
    try:
        claim = read_join_token(rt.settings.secret_key, token, max_age_days=rt.settings.unsubscribe_max_age_days)
    except BadToken:
        return None, None
    campaign = rt.campaigns.get(claim.campaign)
    return (claim, campaign) if invitation_target(campaign, rt.campaigns) is not None else (None, None)


@bp.get("/join/<token>")
def join_page(token: str):
    claim, campaign = _join_claim(token)
    if campaign is None:
        return render_template("join.html", state="invalid", campaign=None), 404
    return render_template("join.html", state="ask", campaign=campaign, token=token, button=INVITATION_BUTTON,
                           target=invitation_target(campaign, runtime().campaigns))


@bp.post("/join/<token>")
def join_post(token: str):
    claim, campaign = _join_claim(token)
    if campaign is None:
        return render_template("join.html", state="invalid", campaign=None), 404
    rt, session = runtime(), db()
    try:
        result = accept_invitation(session, public_id=claim.public_id, campaign=campaign, campaigns=rt.campaigns,
                                   now=utcnow())
        session.commit()
    except SQLAlchemyError:
        session.rollback()
        log.exception("joining from an invitation failed")
        return render_template("join.html", state="error", campaign=campaign), 503
    status = {"joined": 200, "already": 200, "inactive": 409, "invalid": 404}[result.state]
    return render_template("join.html", state=result.state, campaign=campaign, target=result.target), status
