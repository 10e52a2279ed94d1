"""The console's home page (`/admin`): signups, what goes out in the next 7 days, each step's health, this
week's unsubscribes and what needs action. The figures come from operator/home.py and operator/forecast.py
(on a large list, the forecast the worker stored: replaying every reader for each request takes minutes).

The send log used to live at `/admin`; a bookmarked `/admin?status=failed` still lands on it (/admin/messages).
"""
from __future__ import annotations

from flask import redirect, render_template, request, url_for

from service.core.db import utcnow
from service.operator import forecast as forecasting
from service.operator import home
from service.web import db, runtime
from service.web.console import bp, operator_zone

# The send log's filters: an old link to /admin carrying any of them meant the send log.
SEND_LOG_ARGS = ("status", "campaign", "step", "email", "since", "until", "before", "limit")


@bp.get("/")
def index():
    if any(name in request.args for name in SEND_LOG_ARGS):
        return redirect(url_for("admin.messages", **request.args), code=301)
    rt, s, now, tz = runtime(), db(), utcnow(), operator_zone()
    health = home.health(s, rt.campaigns, now=now, tracking=rt.settings.tracking)
    end = forecasting.horizon(now, tz, days=7)
    ahead = forecasting.for_console(rt.dispatcher(), s, now=now, end=end)
    return render_template(
        "admin/home.html", now=now,
        signups=home.signups(s, rt.campaigns, now=now, tz_name=tz),
        forecast=ahead, forecast_days=ahead.by_day(tz, rt.campaigns),
        refresh_minutes=int(forecasting.REFRESH_EVERY.total_seconds() // 60),
        campaigns=rt.campaigns, health=health, tracking=rt.settings.tracking,
        unsubscribes=home.unsubscribes(s, now=now),
        warnings=home.warnings(s, now=now, dkim_on=bool(rt.composer.dkim_keys),
                               postal_placeholder=rt.settings.postal_address_is_placeholder,
                               campaigns_health=health))
