"""The operator console lists campaigns and shows each step's preview, behind the login."""
from __future__ import annotations

import re

import pytest

from service.core.db import utcnow
from service.operator.accounts import add_user

PASSWORD = "correct horse battery"


@pytest.fixture
def logged_in(runtime, client):
    with runtime.sessions() as s, s.begin():
        add_user(s, "ops@example.org", PASSWORD, now=utcnow())
    page = client.get("/admin/login").data.decode()
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert client.post("/admin/login", data={"email": "ops@example.org", "password": PASSWORD,
                                             "csrf": token}).status_code == 302
    return client


def test_campaign_pages_need_a_login(client):
    """Without a session every campaign page redirects to the login."""
    for path in ("/admin/campaigns/", "/admin/campaigns/glute-guide/welcome",
                 "/admin/campaigns/glute-guide/welcome/html"):
        r = client.get(path)
        assert r.status_code == 302 and "/admin/login" in r.headers["Location"]


def test_console_lists_campaigns_and_previews_a_step(runtime, logged_in):
    """The list shows every campaign with its continuation; a step page shows subject and text, and its
    HTML comes from a sandboxed frame URL with a locked-down policy."""
    page = logged_in.get("/admin/campaigns/").data.decode()
    for key in runtime.campaigns:
        assert key in page
    assert "then continues into back-pain-bundle at week-01" in page
    step = runtime.campaigns["back-pain-bundle"].step_by_key("week-05")
    r = logged_in.get("/admin/campaigns/back-pain-bundle/week-05")
    body = r.data.decode()
    assert r.status_code == 200 and step.subject.replace("'", "&#39;") in body and "Hi Sample," in body
    frame = logged_in.get("/admin/campaigns/back-pain-bundle/week-05/html")
    assert frame.status_code == 200 and b"<html" in frame.data.lower()
    assert "default-src 'none'" in frame.headers["Content-Security-Policy"]
    assert logged_in.get("/admin/campaigns/back-pain-bundle/week-99").status_code == 404
