"""The operator console's campaign pages: every campaign and step, and each step's preview (the
same rendering as `drip preview`, with a sample reader). Behind the console's login like /admin."""
from __future__ import annotations

from flask import Blueprint, Response, abort, render_template, url_for

from service.campaigns.model import DAY_NAMES
from service.compose.lint import sample_job
from service.web import console, runtime

bp = Blueprint("admin_campaigns", __name__, url_prefix="/admin/campaigns")
bp.before_request(console.guard)  # same login and CSRF rule as the rest of the console

# The rendered email is shown in a sandboxed frame under its own policy: its inline CSS applies, nothing
# in it can run, load or navigate.
FRAME_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; frame-ancestors 'self'"


def _step(campaign_key: str, step_key: str):
    campaign = runtime().campaigns.get(campaign_key)
    step = campaign.step_by_key(step_key) if campaign else None
    if step is None:
        abort(404)
    return campaign, step


@bp.get("/")
def campaigns():
    items = sorted(runtime().campaigns.values(), key=lambda c: c.key)
    return render_template("admin/campaign_steps.html", campaigns=items, days=DAY_NAMES)


@bp.get("/<campaign_key>/<step_key>")
def preview(campaign_key: str, step_key: str):
    campaign, step = _step(campaign_key, step_key)
    rt = runtime()
    subject, text, _html = rt.composer.render(sample_job(campaign, step, rt.settings.base_url))
    return render_template("admin/campaign_preview.html", campaign=campaign, step=step, subject=subject, text=text,
                           frame=url_for("admin_campaigns.preview_html", campaign_key=campaign.key,
                                         step_key=step.key))


@bp.get("/<campaign_key>/<step_key>/html")
def preview_html(campaign_key: str, step_key: str):
    campaign, step = _step(campaign_key, step_key)
    rt = runtime()
    _subject, _text, html = rt.composer.render(sample_job(campaign, step, rt.settings.base_url))
    response = Response(html, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = FRAME_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response
