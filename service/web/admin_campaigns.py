"""Admin pages for campaigns: health per step, emails sent per day and the funnel (SVG), pause/resume."""
from __future__ import annotations

from flask import abort, flash, redirect, render_template, url_for

from service.core.db import utcnow
from service.operator.campaign_stats import all_stats, campaign_stats, set_paused
from service.operator.charts import daily_bars, funnel_bars
from service.web import db, runtime
from service.web.console import bp


def _campaign(key: str):
    campaign = runtime().campaigns.get(key)
    if campaign is None:
        abort(404)
    return campaign


@bp.get("/campaigns")
def campaigns():
    return render_template("admin/campaigns.html", stats=all_stats(db(), runtime().campaigns, now=utcnow()))


@bp.get("/campaigns/<key>")
def campaign(key: str):
    stats = campaign_stats(db(), _campaign(key), now=utcnow())
    stages = [("enrolled", stats.enrolled)] + [(f"{s.index + 1}. {s.key} sent", s.sent) for s in stats.steps]
    return render_template("admin/campaign.html", stats=stats, daily=daily_bars(stats.per_day),
                           funnel=funnel_bars(stages), current_steps={s.key for s in _campaign(key).steps})


def _switch(key: str, paused: bool):
    _campaign(key)
    s = db()
    set_paused(s, key, paused, now=utcnow())
    s.commit()
    if paused:
        flash("Paused: nothing of this campaign is queued or sent until you resume it.", "ok")
    else:
        from service.web.public import runtime_wake

        runtime_wake()
        flash("Resumed: readers whose step fell due meanwhile get it on the next pass, one email each.", "ok")
    return redirect(url_for("admin.campaign", key=key), code=303)


@bp.post("/campaigns/<key>/pause")
def campaign_pause(key: str):
    return _switch(key, True)


@bp.post("/campaigns/<key>/resume")
def campaign_resume(key: str):
    return _switch(key, False)
