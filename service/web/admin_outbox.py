"""The outbox viewer: the file transport's .eml files in the browser, for `make run` newcomers.

Only file names the transport itself writes are accepted (a strict pattern, then the resolved path must
sit directly in the outbox folder), so no request can read another file.
"""
from __future__ import annotations

import re
from pathlib import Path

from flask import abort, render_template

from service.operator.mailview import parse_email
from service.web.console import bp, email_frame, outbox_dir

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.eml")
SHOWN = 200


def _folder() -> Path:
    folder = outbox_dir()
    if folder is None:
        abort(404, description="The outbox viewer works with the file transport (DRIP_EMAIL_URL=file://...).")
    return folder


def _file(name: str) -> Path:
    folder = _folder()
    if not NAME.fullmatch(name):
        abort(404)
    path = (folder / name).resolve()
    if path.parent != folder or not path.is_file():
        abort(404)
    return path


@bp.get("/outbox")
def outbox():
    folder = _folder()
    files = sorted((p for p in folder.glob("*.eml") if p.is_file()), key=lambda p: (p.stat().st_mtime, p.name),
                   reverse=True) if folder.is_dir() else []
    rows = []
    for path in files[:SHOWN]:
        view = parse_email(path.read_bytes()[:65536])
        head = dict((k.lower(), v) for k, v in view.headers)
        rows.append({"name": path.name, "to": head.get("to", ""), "subject": head.get("subject", ""),
                     "date": head.get("date", "")})
    return render_template("admin/outbox.html", rows=rows, total=len(files), folder=folder, shown=SHOWN)


@bp.get("/outbox/<name>")
def outbox_email(name: str):
    view = parse_email(_file(name).read_bytes())
    return render_template("admin/outbox_email.html", name=name, view=view)


@bp.get("/outbox/<name>/html")
def outbox_html(name: str):
    view = parse_email(_file(name).read_bytes())
    if view.html is None:
        abort(404)
    return email_frame(view.html)
