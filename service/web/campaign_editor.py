"""The console's campaign editor (`/admin/campaign-editor/<campaign>`): a draft of the campaign's steps
(subject, preheader, Markdown or HTML/text body, delay, send hour), a live preview at phone and desktop
width, a test send, the content lint and SpamAssassin's score, then, before publishing, what the change
does to enrolled readers. Publishing makes the draft the campaign's next version; every process sends it
from its next pass on. Behind the console's login and CSRF check like the rest of /admin.

The pages are thin: the rules live in operator/campaign_editor.py.
"""
from __future__ import annotations

from html import escape

from flask import Blueprint, Response, abort, flash, g, redirect, render_template, request, url_for
from sqlalchemy.exc import IntegrityError

from service.audience.signups import SignupError, normalize_email
from service.campaigns import versions
from service.campaigns.model import Campaign, CampaignError, Step
from service.compose.lint import lint_campaign
from service.core.db import utcnow
from service.operator import campaign_editor as editor
from service.operator.step_preview import TestSendError, sample_email, send_test, spam_score
from service.web import console, db, runtime

bp = Blueprint("campaign_editor", __name__, url_prefix="/admin/campaign-editor")
bp.before_request(console.guard)  # same login and CSRF rule as the rest of the console


def _draft(key: str) -> editor.Draft:
    if key not in runtime().campaigns:
        abort(404)
    return editor.load_draft(db(), runtime().campaigns, key)


def _step(campaign: Campaign, step_key: str) -> Step:
    step = campaign.step_by_key(step_key)
    if step is None:
        abort(404)
    return step


def _form_edit() -> editor.StepEdit:
    f = request.form
    return editor.StepEdit(subject=f.get("subject", ""), preheader=f.get("preheader", ""), delay=f.get("delay", ""),
                           send_hour=f.get("send_hour", ""), body_format=f.get("body_format", "markdown"),
                           markdown=f.get("markdown", ""), html=f.get("html", ""), text=f.get("text", ""))


def _who() -> str:
    return g.user.email


# -- the draft's overview: steps, changes and their readers, lint, versions, publish ------------------------------
@bp.get("/<key>")
def overview(key: str):
    draft = _draft(key)
    live = runtime().campaigns[key]
    campaign = draft.campaign()
    composer = runtime().preview_composer()
    problems = lint_campaign(campaign, composer)
    impact = editor.impact(db(), live, campaign) if draft.saved else editor.Impact()
    current = versions.latest(db(), key)
    return render_template("admin/campaign_editor.html", draft=draft, campaign=campaign, live=live,
                           problems=problems, errors=[p for p in problems if p.level == "error"], impact=impact,
                           history=versions.history(db(), key), current=current)


@bp.post("/<key>/steps")
def add_step(key: str):
    draft = _draft(key)
    f = request.form
    try:
        files = editor.add_step(db(), key, draft.files, f.get("key", ""), f.get("subject", ""), f.get("delay", "7d"))
        editor.save_draft(db(), runtime().campaigns, draft, files, by=_who(), now=utcnow())
    except editor.EditError as exc:
        flash(f"Step not added: {exc.message}", "error")
        return redirect(url_for("campaign_editor.overview", key=key), code=303)
    db().commit()
    flash(f"Step {f.get('key', '').strip()} added to the draft: write its email.", "ok")
    return redirect(url_for("campaign_editor.step", key=key, step_key=f.get("key", "").strip()), code=303)


@bp.post("/<key>/steps/<step_key>/move")
def move_step(key: str, step_key: str):
    return _change(key, lambda d: editor.move_step(key, d.files, step_key, -1 if request.form.get("to") == "up" else 1),
                   f"Step {step_key} moved in the draft.")


@bp.post("/<key>/steps/<step_key>/remove")
def remove_step(key: str, step_key: str):
    return _change(key, lambda d: editor.remove_step(key, d.files, step_key),
                   f"Step {step_key} removed from the draft.")


def _change(key: str, change, done: str):
    draft = _draft(key)
    try:
        editor.save_draft(db(), runtime().campaigns, draft, change(draft), by=_who(), now=utcnow())
    except editor.EditError as exc:
        flash(f"Not changed: {exc.message}", "error")
        return redirect(url_for("campaign_editor.overview", key=key), code=303)
    db().commit()
    flash(done, "ok")
    return redirect(url_for("campaign_editor.overview", key=key), code=303)


@bp.post("/<key>/publish")
def publish(key: str):
    draft = _draft(key)
    try:
        errors = [p.line() for p in lint_campaign(draft.campaign(), runtime().preview_composer()) if p.level == "error"]
        row = editor.publish(db(), runtime().campaigns, key, by=_who(), now=utcnow(), errors=errors)
        db().commit()
    except (editor.EditError, CampaignError) as exc:
        flash(f"Not published: {getattr(exc, 'message', exc)}", "error")
        return redirect(url_for("campaign_editor.overview", key=key), code=303)
    except IntegrityError:  # another operator's publish took the same version number a moment before
        db().rollback()
        flash("Not published: another version was published at the same moment. Check the draft and publish "
              "again.", "error")
        return redirect(url_for("campaign_editor.overview", key=key), code=303)
    runtime().campaigns.refresh()  # this process at once; the others on their next pass
    from service.web.public import runtime_wake

    runtime_wake()
    flash(f"Published version {row.version} of {key}: emails composed from the next pass on use it.", "ok")
    return redirect(url_for("campaign_editor.overview", key=key), code=303)


@bp.post("/<key>/discard")
def discard(key: str):
    _draft(key)
    editor.discard(db(), key)
    db().commit()
    flash("Draft discarded: the published version is unchanged.", "ok")
    return redirect(url_for("campaign_editor.overview", key=key), code=303)


@bp.post("/<key>/versions/<int:version>/restore")
def restore(key: str, version: int):
    _draft(key)
    try:
        editor.restore(db(), runtime().campaigns, key, version, by=_who(), now=utcnow())
    except editor.EditError as exc:
        flash(f"Not restored: {exc.message}", "error")
        return redirect(url_for("campaign_editor.overview", key=key), code=303)
    db().commit()
    flash(f"Version {version} is in the draft. Check what it changes below, then publish it.", "ok")
    return redirect(url_for("campaign_editor.overview", key=key), code=303)


# -- one step ---------------------------------------------------------------------------------------------------
@bp.get("/<key>/steps/<step_key>")
def step(key: str, step_key: str):
    draft = _draft(key)
    campaign = draft.campaign()
    step = _step(campaign, step_key)
    return _step_page(draft, campaign, step, editor.step_body(draft, step))


def _step_page(draft, campaign, step, fields, *, status: int = 200, error: editor.EditError | None = None,
               spam=None, problems=None):
    if problems is None:  # the content lint of the step as the draft has it
        problems = lint_campaign(campaign, runtime().preview_composer(), only=step.key)
    return render_template("admin/campaign_step_editor.html", draft=draft, campaign=campaign, step=step, f=fields,
                           error=error, problems=problems, spam=spam,
                           test_to=request.form.get("to") or g.user.email), status


@bp.post("/<key>/steps/<step_key>")
def save_step(key: str, step_key: str):
    draft = _draft(key)
    _step(draft.campaign(), step_key)
    fields = _form_edit()
    try:
        files = editor.apply_step(key, draft.files, step_key, fields)
        draft = editor.save_draft(db(), runtime().campaigns, draft, files, by=_who(), now=utcnow())
    except editor.EditError as exc:
        return _step_page(draft, draft.campaign(), _step(draft.campaign(), step_key), fields, status=422, error=exc)
    db().commit()
    flash(f"Saved {step_key} in the draft. Nothing is sent differently until you publish.", "ok")
    return redirect(url_for("campaign_editor.step", key=key, step_key=step_key), code=303)


def _edited(key: str, step_key: str) -> tuple[Campaign, Step]:
    """The draft with the posted form applied (nothing saved), or the draft as saved on a GET."""
    draft = _draft(key)
    files = draft.files
    if request.method == "POST":
        files = editor.apply_step(key, files, step_key, _form_edit())
    campaign = editor.Draft(key, files, draft.base_version, False).campaign()
    return campaign, _step(campaign, step_key)


@bp.route("/<key>/steps/<step_key>/preview/<part>", methods=["GET", "POST"])
def preview(key: str, step_key: str, part: str):
    """The step for a sample reader, shown in a sandboxed frame: `html` (the frame's width is the phone's
    or the desktop's) or `text` (subject, preheader and text part)."""
    if part not in ("html", "text"):
        abort(404)
    try:
        campaign, step = _edited(key, step_key)
        email = sample_email(runtime().preview_composer(), campaign, step, now=utcnow())
    except (editor.EditError, CampaignError) as exc:
        return _frame_message(getattr(exc, "message", str(exc)))
    except Exception as exc:  # a template that does not render: show why, where the preview would be
        return _frame_message(f"does not render: {exc.__class__.__name__}: {exc}")
    if part == "html":
        return console.email_frame(email.html)
    return console.email_frame(
        f"<pre style=\"white-space:pre-wrap;font:14px/1.5 monospace;margin:12px\">Subject: {escape(email.subject)}\n"
        f"Preheader: {escape(step.preheader)}\n\n{escape(email.text)}</pre>")


def _frame_message(message: str) -> Response:
    response = console.email_frame(f"<p style=\"color:#b42318;font:15px system-ui;margin:12px\">{escape(message)}</p>")
    response.status_code = 422
    return response


@bp.post("/<key>/steps/<step_key>/send-test")
def test_send(key: str, step_key: str):
    draft = _draft(key)
    fields = _form_edit()
    try:
        address, _ = normalize_email(request.form.get("to", ""))
        campaign, step = _edited(key, step_key)
        email = send_test(runtime().preview_composer(), runtime().transport, campaign, step, to=address, now=utcnow())
    except SignupError as exc:
        return _step_page(draft, draft.campaign(), _step(draft.campaign(), step_key), fields, status=422,
                          error=editor.EditError(f"test address: {exc.message}", "to"))
    except (editor.EditError, CampaignError, TestSendError) as exc:
        error = exc if isinstance(exc, editor.EditError) else editor.EditError(str(exc))
        return _step_page(draft, draft.campaign(), _step(draft.campaign(), step_key), fields, status=422, error=error)
    except Exception as exc:  # a body that does not render: said on the page, nothing sent
        error = editor.EditError(f"not sent: the email does not render: {exc.__class__.__name__}: {exc}")
        return _step_page(draft, draft.campaign(), _step(draft.campaign(), step_key), fields, status=422, error=error)
    flash(f"Test sent to {address}: {email.subject}", "ok")
    campaign = draft.campaign()
    return _step_page(draft, campaign, _step(campaign, step_key), fields)


@bp.post("/<key>/steps/<step_key>/check")
def check(key: str, step_key: str):
    """The content lint of the step as in the form, and SpamAssassin's score where it is installed."""
    draft = _draft(key)
    fields = _form_edit()
    try:
        campaign, step = _edited(key, step_key)
    except (editor.EditError, CampaignError) as exc:
        error = exc if isinstance(exc, editor.EditError) else editor.EditError(str(exc))
        return _step_page(draft, draft.campaign(), _step(draft.campaign(), step_key), fields, status=422, error=error)
    composer = runtime().preview_composer()
    problems = lint_campaign(campaign, composer, only=step.key)
    spam = None
    try:
        spam = spam_score(sample_email(composer, campaign, step, now=utcnow()).raw) or "not installed"
    except Exception as exc:  # SpamAssassin's own failure is reported, not a crash of the page
        spam = f"did not run: {exc.__class__.__name__}"
    return _step_page(draft, campaign, step, fields, problems=problems, spam=spam)
