"""Fifty simultaneous form posts for one address, against `drip web` with two workers, grant one
confirmation email: the inbox-bombing guard holds under real concurrency, on SQLite and PostgreSQL."""
from __future__ import annotations

import shutil
from collections import Counter

import pytest
from conftest import ROOT
from sqlalchemy import func, select
from test_concurrency import Drip, drip, post_burst, received  # noqa: F401  (drip is a fixture)

from service.core.models import Consent, Enrollment, PendingConfirmation


@pytest.mark.slow
def test_fifty_simultaneous_posts_send_one_confirmation(drip: Drip, runtime, smtp, tmp_path) -> None:  # noqa: F811
    """All 50 answers are 200/201 "confirmation_sent"; one pending row, one consent, no enrollment, and
    the next pass sends exactly one confirmation email."""
    root = tmp_path / "templates"
    shutil.copytree(ROOT / "email_templates", root)
    toml = root / "glute-guide" / "campaign.toml"
    toml.write_text(toml.read_text().replace("send_hour = 9\n", "send_hour = 9\ndouble_opt_in = true\n", 1))
    drip.env["DRIP_TEMPLATES_DIR"] = str(root)
    drip.web(workers=2)
    results = post_burst(f"{drip.base_url}/signup/glute-guide", ["bomb@example.com"] * 50)
    assert {status for status, _ in results} <= {200, 201}, results
    assert all('"confirmation_sent"' in body for _, body in results), results
    with runtime.sessions() as s:
        assert s.scalar(select(func.count()).select_from(PendingConfirmation)) == 1
        assert s.scalar(select(func.count()).select_from(Consent)) == 1
        assert s.scalar(select(func.count()).select_from(Enrollment)) == 0
    drip.tick()
    assert received(smtp) == Counter({("bomb@example.com", "Please confirm your email address"): 1})
