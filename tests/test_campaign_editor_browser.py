"""The coach's day in a real browser (headless Chromium via Playwright) against `drip serve` as a subprocess:
from the campaign page, open week 5's preview, then its editor; rewrite it in Markdown and watch the live
preview at 375 px; send a test (it reaches the SMTP server); save, see the readers the change reaches;
publish. A worker that was running since before the edit sends the new text on its next pass, with no
restart, to the reader due week 5, and nothing of it to the readers past it, snoozed or gone.
Screenshots of each page at 1280 and 390 px are kept under the test's tmp_path/screenshots."""
from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from test_browser import server  # noqa: F401  (a fixture)
from test_campaign_editor import BUNDLE, NEW_BODY, readers_in_four_states, sent
from test_console_browser import log_in

pytestmark = pytest.mark.browser

WIDTHS = (1280, 390)
# Far enough ahead that the running `drip serve` (real clock) never finds these readers due: only the
# test's worker, with its own clock, sends to them.
TODAY = datetime.now(UTC).replace(hour=15, minute=30, second=0, microsecond=0) + timedelta(days=60)
WIDER_THAN_SCREEN = "document.documentElement.scrollWidth - document.documentElement.clientWidth"


def shoot(page: Page, folder: Path, name: str) -> None:
    """A screenshot at each width; at 390 px the page must not scroll sideways."""
    folder.mkdir(exist_ok=True)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        assert page.evaluate(WIDER_THAN_SCREEN) <= 0, f"{name} scrolls sideways at {width} px"
        # The whole page in one viewport: Chromium leaves frames outside the viewport unpainted in a
        # full-page screenshot.
        page.set_viewport_size({"width": width, "height": page.evaluate("document.documentElement.scrollHeight")})
        page.wait_for_timeout(300)  # the frames repaint at the new size before the picture is taken
        shot = folder / f"{name}-{width}.png"
        page.screenshot(path=str(shot))
        assert shot.read_bytes().startswith(b"\x89PNG")
    page.set_viewport_size({"width": 1280, "height": 900})


def test_coach_rewrites_week_5_in_markdown_and_the_running_worker_sends_it(server, page, smtp, runtime,  # noqa: F811
                                                                             tmp_path):
    shots = tmp_path / "screenshots"
    worker = runtime.dispatcher(max_per_day=0)  # running since before the edit; its clock is the test's
    readers_in_four_states(runtime, TODAY, worker)
    old_subject = runtime.campaigns[BUNDLE].step_by_key("week-05").subject
    page.set_viewport_size({"width": 1280, "height": 900})
    log_in(page, server, runtime)

    # The campaign page links each step's preview and editor.
    page.goto(f"{server}/admin/campaigns/{BUNDLE}")
    row = page.locator("tr", has=page.get_by_role("link", name=re.compile(r"week-05$")))
    row.get_by_role("link", name="Preview").click()
    expect(page.get_by_role("heading", name=old_subject)).to_be_visible()
    shoot(page, shots, "step-preview")
    page.go_back()
    row.get_by_role("link", name="Edit").click()
    expect(page.get_by_role("heading", name="Step 6: week-05")).to_be_visible()

    # Rewrite it in Markdown; the live preview follows at phone width.
    page.locator("input[name=body_format][value=markdown]").check()
    page.get_by_label("Subject").fill("Week 5: your hips, five weeks in")
    page.locator("textarea[name=markdown]").fill(NEW_BODY)
    phone = page.frame_locator("iframe[name=phone-frame]")
    expect(phone.locator("h1")).to_have_text("Your hips, five weeks in")
    expect(phone.get_by_role("link", name="Watch the TFL release")).to_be_visible()
    assert page.locator("iframe[name=phone-frame]").bounding_box()["width"] == pytest.approx(375, abs=1)
    expect(page.frame_locator("iframe[name=text-frame]").locator("pre")).to_contain_text("YOUR HIPS, FIVE WEEKS IN")
    shoot(page, shots, "step-editor")

    # A test email reaches the SMTP server, marked as a test; nothing is saved yet, and the page keeps
    # showing the text as typed.
    page.get_by_label("Send a test to").fill("coach@example.org")
    page.get_by_role("button", name="Send test").click()
    expect(page.get_by_role("status")).to_contain_text("Test sent to coach@example.org")
    expect(phone.locator("h1")).to_have_text("Your hips, five weeks in")
    smtp.handler.wait_for(1)
    [test] = smtp.handler.messages(to="coach@example.org")
    assert test["Subject"] == "[TEST] Week 5: your hips, five weeks in" and test["X-Drip-Test"] == "1"
    assert "YOUR HIPS, FIVE WEEKS IN" in test.get_body(("plain",)).get_content()

    # Save, then see whom the change reaches before publishing.
    page.get_by_role("button", name="Save to draft").click()
    expect(page.get_by_role("status")).to_contain_text("Saved week-05 in the draft")
    page.get_by_role("link", name="edit", exact=True).click()
    impact = page.locator("table.impact tbody tr", has_text="week-05")
    expect(impact).to_contain_text("subject, body")
    expect(impact.locator("td").nth(2)).to_have_text("3")  # due@, snoozed@ (later) and new@
    expect(impact.locator("td").nth(3)).to_have_text("2")  # next for due@ and snoozed@
    expect(page.locator("ul.diff")).to_contain_text("reader(s)")
    shoot(page, shots, "campaign-editor")
    page.get_by_role("button", name="Publish version 2").click()
    expect(page.get_by_role("status")).to_contain_text("Published version 2")
    expect(page.locator("table.versions")).to_contain_text("ops@example.org")

    # The worker's next pass sends the new text, without a restart.
    mark = max((m.id for m in _messages(runtime)), default=0)
    worker.run_pass(TODAY)
    assert sent(runtime, after=mark) == {"due": ["week-05"], "past": ["week-06"], "new": ["week-01"]}
    smtp.handler.wait_for(1 + 4)
    [week5] = [m for m in smtp.handler.messages(to="due@example.org") if m["Subject"].startswith("Week 5")]
    assert "YOUR HIPS, FIVE WEEKS IN" in week5.get_body(("plain",)).get_content()
    assert not any(m["Subject"].startswith("Week 5") for m in smtp.handler.messages(to="past@example.org"))

    # The console's own process shows the published version too.
    page.goto(f"{server}/admin/campaigns/")
    expect(page.locator("section.card", has_text=BUNDLE).first).to_contain_text("version 2")
    page.goto(f"{server}/admin/campaigns/{BUNDLE}/week-05")
    expect(page.get_by_role("heading", name="Week 5: your hips, five weeks in")).to_be_visible()

    # Steps are added, moved and removed in a draft, each change shown with the readers it reaches.
    page.goto(f"{server}/admin/campaign-editor/{BUNDLE}")
    page.get_by_label("New step key").fill("week-13")
    page.locator("form.add-step").get_by_label("Subject").fill("Ten weeks in")
    page.get_by_role("button", name="Add step at the end").click()
    expect(page.get_by_role("heading", name=re.compile(r"^Step \d+: week-13$"))).to_be_visible()
    page.get_by_role("link", name="edit", exact=True).click()
    page.get_by_role("button", name="Move week-13 up").click()
    # Waited for (the click reloads the page; reading the table at once could read the page before it).
    cells = page.locator("table.steps-editor tbody tr td:nth-child(2)")
    expect(cells).to_contain_text(["week-13", "week-12"])  # in this order: moved
    keys = cells.all_inner_texts()
    assert keys.index("week-13") == keys.index("week-12") - 1
    added = page.locator("table.impact tbody tr", has_text="week-13")
    expect(added).to_contain_text("added")
    expect(added.locator("td").nth(2)).to_have_text("4")  # every active reader: past@, due@, snoozed@, new@
    expect(page.locator("table.impact tbody tr", has_text="week-09")).to_have_count(0)  # its place among the old
    shoot(page, shots, "campaign-editor-steps")
    page.get_by_role("button", name="Remove week-13").click()
    expect(page.locator("table.steps-editor")).not_to_contain_text("week-13")
    page.get_by_role("button", name="Discard draft").click()
    expect(page.get_by_role("status")).to_contain_text("Draft discarded")


def _messages(rt):
    from sqlalchemy import select

    from service.core.models import Message

    with rt.sessions() as s:
        return list(s.scalars(select(Message)))
