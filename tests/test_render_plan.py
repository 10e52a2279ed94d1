"""A step rendered once and filled with each reader's values gives exactly the bytes of a full
render, for every shipped campaign and for awkward values; templates where that cannot be guaranteed
are rendered in full."""
from __future__ import annotations

import re
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.campaigns.loader import load_campaigns
from service.compose import mime
from service.compose.composer import ComposeJob, Composer

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 3, 3, 15, 0, tzinfo=UTC)
AWKWARD = ["", "Ada", "Zoë O'Brien-Smith", 'Bob "the builder" & <Co>', "Ann\xa0Lee", "<script>alert(1)</script>",
           "=?utf-8?q?x?=", "Tom & Jerry's", "😀 Emoji", "a" * 180, "Dr. Strange, Jr.", "&amp; &lt;"]


def composers(templates: Path) -> tuple[Composer, Composer]:
    def make(plan: bool) -> Composer:
        c = Composer(templates_dir=templates, base_url="https://drip.example.org", postal_address="1 Test St & Co",
                     plan_renders=plan)
        c.reader_links = lambda public_id, pk: {"preferences_url": f"https://drip.example.org/p/{public_id}?a=1&b=2",
                                                "view_url": f"https://drip.example.org/v/{pk}"}
        return c
    return make(True), make(False)


def job(campaign, step, name: str, email: str = "reader@example.com", pk: int = 1) -> ComposeJob:
    return ComposeJob(message_pk=pk, message_id=f"<drip.{pk}.x@example.org>", campaign=campaign, step=step,
                      to_email=email, name=name, unsubscribe_url=f"https://drip.example.org/u/tok{pk}?x=1&y=\"2\"",
                      now=NOW, public_id=f"pub{pk}")


def test_every_shipped_step_is_planned_and_gives_the_full_render_bytes() -> None:
    campaigns = load_campaigns(ROOT / "email_templates")
    planned, full = composers(ROOT / "email_templates")
    for campaign in campaigns.values():
        for step in campaign.steps:
            for i, name in enumerate(AWKWARD):
                a, b = planned.compose(job(campaign, step, name, pk=i)), full.compose(job(campaign, step, name, pk=i))
                assert (a.subject, a.text, a.html) == (b.subject, b.text, b.html), (campaign.key, step.key, name)
                assert _unbounded(a.raw) == _unbounded(b.raw), (campaign.key, step.key, name)
    plans = [plan for _campaign, plan in planned._plans.values()]
    assert plans and all(plan is not None for plan in plans)  # the shipped templates are all plannable


@settings(max_examples=150, deadline=None)
@given(name=st.text(max_size=60), local=st.from_regex(r"[a-z0-9._+'-]{1,20}", fullmatch=True))
def test_any_name_and_address_give_the_full_render_bytes(name: str, local: str) -> None:
    campaigns = load_campaigns(ROOT / "email_templates")
    campaign = campaigns["back-pain-bundle"]
    planned, full = _PAIR
    for step in (campaign.steps[0], campaign.steps[3]):
        a = planned.compose(job(campaign, step, name, email=f"{local}@example.com"))
        b = full.compose(job(campaign, step, name, email=f"{local}@example.com"))
        assert (a.subject, a.text, a.html) == (b.subject, b.text, b.html)
        assert _unbounded(a.raw) == _unbounded(b.raw)  # the bodies encoded ahead (mime.BodyTemplate) included


def _unbounded(raw: bytes) -> bytes:
    """The email with its random MIME boundary replaced by a fixed one."""
    boundary = re.search(rb'boundary="([^"]+)"', raw).group(1)
    assert raw.count(boundary) == 4  # the header, two delimiters, the closing one
    return raw.replace(boundary, b"BOUNDARY")


def test_the_planned_bodies_are_used_and_reader_values_at_the_text_ends_are_handled() -> None:
    """The shipped steps' plans carry their MIME bodies encoded ahead; a text that starts with a
    value (the greeting) strips that value, and a value left empty there falls back to encoding whole."""
    campaign = load_campaigns(ROOT / "email_templates")["back-pain-bundle"]
    planned, full = _PAIR
    planned.compose(job(campaign, campaign.steps[0], "Ada"))
    plans = [plan for _campaign, plan in planned._plans.values() if plan is not None]
    assert plans and all(p.text_body is not None and p.html_body is not None for p in plans)
    for greeting in ("  Hi Ada,", "", " \n "):
        ctx = planned.context(job(campaign, campaign.steps[0], "Ada"))
        ctx.update(greeting=greeting, subject="S")
        text, _html, bodies = plans[0].render_bodies(ctx, lambda t: t.strip() + "\n")
        if bodies is not None:
            head, pieces = bodies[0]
            assert (head, b"".join(pieces)) == mime.body_part("plain", text)
        else:
            assert not greeting.strip()


_PAIR = composers(ROOT / "email_templates")

UNSAFE = {
    "filtered": "<p>{{ greeting|upper }}</p>",
    "condition": "{% if subscriber.first_name %}<p>{{ subscriber.first_name }}</p>{% endif %}",
    "assigned": "{% set who = subscriber.name %}<p>{{ who }}</p>",
    "attribute-selector": "<style>a[href^=\"https\"] { color: red }</style>"
                          "<p><a href=\"{{ unsubscribe_url }}\">x</a></p>",
    "empty-selector": "<style>span:empty { display: none }</style><p><span>{{ subscriber.first_name }}</span></p>",
    "in-style": "<style>/* {{ subscriber.name }} */ p { color: red }</style><p>x</p>",
    "in-comment": "<!-- {{ subscriber.email }} --><p>x</p>",
    "autoescape-off": "{% autoescape false %}<p>{{ subscriber.name }}</p>{% endautoescape %}",
    "macro": "{% macro hi() %}{{ greeting }}{% endmacro %}<p>{{ hi()|upper }}</p>",
    "random": "<p>{{ greeting }} {{ [1, 2, 3]|random }}</p>",
    # output captured instead of printed: what the template does with it depends on the value
    "set-block": "{% set who %}{{ subscriber.first_name }}{% endset %}<p>{{ who|length }}</p>",
    "self-block": "{% block who %}{{ subscriber.first_name }}{% endblock %}<p>{{ self.who()|length }}</p>",
}
# Captured output whose value comes from another file (the campaign's `part.html`).
UNSAFE_WITH_PART = {
    "super": ('{% extends "odd/part.html" %}{% block who %}{{ super()|length }}{% endblock %}',
              "<html><head></head><body><p>{% block who %}{{ subscriber.first_name }}{% endblock %}</p></body></html>"),
    "include-captured": ('{% set who %}{% include "odd/part.html" %}{% endset %}<p>{{ who|length }}</p>',
                         "{{ subscriber.first_name }}"),
    "import-with-context": ('{% import "odd/part.html" as who with context %}<p>{{ who|string|length }}</p>',
                            "{{ subscriber.first_name }}"),
}


# Text the HTML parser places by whether it is blank: an empty name (a reader who gave none) leaves it
# blank where the marker did not, so the parser puts it elsewhere.
BLANK_SENSITIVE = {
    "in-table": ("<html><head></head><body><table> {{ subscriber.first_name }} <tr><td>x</td></tr></table>"
                 "</body></html>"),
    "in-head": "<html><head> {{ subscriber.name }} <title>x</title></head><body><p>x</p></body></html>",
    "after-pre": "<html><head></head><body><pre>{{ subscriber.first_name }}\nx</pre></body></html>",
}

@pytest.mark.parametrize("kind", sorted(UNSAFE))
def test_templates_that_use_values_otherwise_are_rendered_in_full(tmp_path: Path, kind: str) -> None:
    _check_rendered_in_full(tmp_path, f"<html><head></head><body>{UNSAFE[kind]}</body></html>", kind)


@pytest.mark.parametrize("kind", sorted(UNSAFE_WITH_PART))
def test_output_captured_from_another_template_is_rendered_in_full(tmp_path: Path, kind: str) -> None:
    """A block's super(), an include in a {% set %} block or a module imported with context: their output
    is a value the template can measure or compare, so the step is rendered in full."""
    html, part = UNSAFE_WITH_PART[kind]
    _check_rendered_in_full(tmp_path, html if html.startswith("{% extends") else
                            f"<html><head></head><body>{html}</body></html>", kind, part=part)


@pytest.mark.parametrize("kind", sorted(BLANK_SENSITIVE))
def test_text_placed_by_whether_it_is_blank_is_rendered_in_full(tmp_path: Path, kind: str) -> None:
    """Directly in a <table> or <head>, or just after <pre>, an empty value changes where the HTML parser
    puts the text around it; such a step is rendered in full, so readers without a name get the same bytes."""
    _check_rendered_in_full(tmp_path, BLANK_SENSITIVE[kind], kind)

def _check_rendered_in_full(tmp_path: Path, html: str, kind: str, part: str | None = None) -> None:
    templates = tmp_path / "t"
    shutil.copytree(ROOT / "email_templates" / "_base", templates / "_base")
    camp = templates / "odd"
    camp.mkdir()
    head = (ROOT / "email_templates" / "back-pain-bundle" / "campaign.toml").read_text(encoding="utf-8")
    head = "\n".join(line for line in head.split("[[steps]]")[0].splitlines()
                     if not line.startswith(("digest", "continue_", "invite_")))
    (camp / "campaign.toml").write_text(
        head.replace('key = "back-pain-bundle"', 'key = "odd"')
        + '\n[[steps]]\nkey = "one"\ndelay = "0"\nsubject = "Hi"\ntemplate = "one"\n', encoding="utf-8")
    (camp / "one.html").write_text(html, encoding="utf-8")
    if part is not None:
        (camp / "part.html").write_text(part, encoding="utf-8")
    (camp / "one.txt").write_text("{{ greeting }}\n", encoding="utf-8")
    campaign = load_campaigns(templates)["odd"]
    planned, full = composers(templates)
    for name in ("", "Ada <b>", "Zoë", "Ada"):
        step = campaign.steps[0]
        a, b = planned.compose(job(campaign, step, name)), full.compose(job(campaign, step, name))
        if kind != "random":
            assert (a.subject, a.text, a.html) == (b.subject, b.text, b.html)
    assert [plan for _c, plan in planned._plans.values()] == [None]


def test_a_subject_naming_the_footer_why_follows_each_reader(tmp_path: Path) -> None:
    """A subject printing `why` (a continued enrollment names the campaign the reader signed up for) is
    the reader's own, not the first reader's: the subject is filled only with what is the same for all."""
    templates = tmp_path / "t"
    shutil.copytree(ROOT / "email_templates", templates)
    toml = templates / "back-pain-bundle" / "campaign.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace(
        'subject = "Your free back-pain resource bundle is here"', 'subject = "{{ greeting }} {{ why }}"'),
        encoding="utf-8")
    campaign = load_campaigns(templates)["back-pain-bundle"]
    planned, full = composers(templates)
    for why in ("You asked for the glute guide", "You asked for the plateau guide", ""):
        reader = replace(job(campaign, campaign.steps[0], "Ada"), why=why)
        assert planned.compose(reader).subject == full.compose(reader).subject
