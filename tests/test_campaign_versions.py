"""Campaign versions and the Markdown format, outside the console: a Markdown body makes both parts and never
reads a reader's value as Markdown; `drip campaigns check` warns about words outside the content block;
start-up publishes the shipped folders (and deployed file edits) but never over a console publish;
`drip campaigns export` / `import` move a published version to a folder and back."""
from __future__ import annotations

import shutil
import tomllib
from datetime import timedelta
from pathlib import Path

from click.testing import CliRunner
from conftest import ROOT, at, with_settings
from sqlalchemy import select

from service.audience.signups import ConsentMeta, parse_signup, signup
from service.campaigns import versions
from service.cli import main
from service.commands.context import sync_campaign_folders
from service.compose import markdown
from service.core.models import CampaignVersion, Message
from service.operator.step_preview import sample_email

BUNDLE = "back-pain-bundle"
T0 = at("2026-06-01T13:30:00")


def copy_templates(tmp_path: Path) -> Path:
    root = tmp_path / "templates"
    shutil.copytree(ROOT / "email_templates", root)
    return root


def as_markdown(folder: Path, step: str, body: str) -> None:
    """The step's hand-written pair replaced by one Markdown body."""
    (folder / f"{step}.html").unlink()
    (folder / f"{step}.txt").unlink()
    (folder / f"{step}.md").write_text(body)


def test_markdown_body_makes_both_parts_and_a_readers_name_stays_text(runtime, smtp, tmp_path):
    """A folder step written in Markdown is sent with an HTML part (headings, emphasis, links tagged with the
    campaign's UTM) and a text part without tags; a reader named like a Markdown link or an HTML tag sees their
    name as written, and raw HTML in the body is shown, not run."""
    root = copy_templates(tmp_path)
    as_markdown(root / BUNDLE, "welcome", "{{ greeting }}\n\n## Your *bundle*\n\n[The psoas release]"
                "({{ resources.psoas_release }}) is where to start. <b>raw</b>\n")
    rt = with_settings(runtime, templates_dir=root)
    for email, name in (("md@example.org", "[Bob](https://evil.example)"), ("tag@example.org", "<i>Eve</i>")):
        data = parse_signup({"email": email, "name": name}, campaigns=rt.campaigns, default_campaign=BUNDLE)
        with rt.sessions() as s, s.begin():
            signup(s, data, campaign=rt.campaigns[BUNDLE], meta=ConsentMeta("json"), now=T0)
    rt.dispatcher().run_pass(T0)
    md = smtp.handler.messages(to="md@example.org")[0]
    html, text = md.get_body(("html",)).get_content(), md.get_body(("plain",)).get_content()
    assert "Your <em" in html
    assert 'href="https://backpainwarriors.example/psoas-release-technique/?utm_source=drip' in html
    assert "Hi [Bob](https://evil.example)," in html and 'href="https://evil.example' not in html
    assert "&lt;b&gt;raw&lt;/b&gt;" in html
    assert "YOUR BUNDLE" in text and "The psoas release (https://backpainwarriors.example/psoas-release-technique/" \
        in text and "<em>" not in text
    tag = smtp.handler.messages(to="tag@example.org")[0].get_body(("html",)).get_content()
    assert "Hi &lt;i&gt;Eve&lt;/i&gt;," in tag
    with rt.sessions() as s:
        assert set(s.scalars(select(Message.status))) == {"sent"}
    rt.sessions.kw["bind"].dispose()


def test_markdown_text_part_lists_headings_and_statements():
    """The text template made from Markdown: numbered and nested lists, a hard line break, a statement on a
    line of its own left bare (not inside a paragraph) in both parts, a macro call usable in both."""
    html, text = markdown.templates("1. one\n2. two\n   - inner\n\nLine one  \nline two\n\n{% if subscriber.name %}\n\n"
                                    "Named\n\n{% endif %}\n\n{{ m.button(resources.x, \"Go\") }}\n")
    assert "1. one\n2. two\n   - inner" in text and "Line one\nline two" in text
    assert "\n{% if subscriber.name %}\n" in text and "<p>{% if" not in html and "{% if subscriber.name %}" in html
    assert "<p>{{ m.button" not in html and "{{ m.button(resources.x, \"Go\") }}" in text
    assert text.startswith('{% extends "_base/email.txt" %}') and html.startswith('{% extends "_base/email.html" %}')


def test_check_warns_about_words_outside_the_content_block(runtime, tmp_path, monkeypatch):
    """`drip campaigns check` names the template and line of words written outside {% block content %},
    which the layout would drop without a word."""
    root = copy_templates(tmp_path)
    week = root / BUNDLE / "week-03.txt"
    week.write_text("P.S. see you next week\n" + week.read_text())
    monkeypatch.chdir(tmp_path)
    env = {"DATABASE_URL": runtime.settings.database_url, "DRIP_SECRET_KEY": runtime.settings.secret_key,
           "DRIP_TEMPLATES_DIR": str(root)}
    result = CliRunner().invoke(main, ["campaigns", "check"], env=env)
    assert "step week-03: warning: week-03.txt:1: text outside {% block content %} is dropped" in result.output
    assert result.output.count("outside {% block content %}") == 1


def test_start_up_publishes_the_folders_once_and_never_over_the_console(runtime, tmp_path):
    """A fresh database gets every shipped folder as version 1 (sent exactly as shipped); starting again
    changes nothing; an edited folder is published as the next version while the newest came from files; after
    a console publish, an edited folder is not published, and a note says which version is sent."""
    root = copy_templates(tmp_path)
    rt = with_settings(runtime, templates_dir=root)
    sync_campaign_folders(rt)
    sync_campaign_folders(rt)
    with rt.sessions() as s:
        rows = s.execute(select(CampaignVersion.campaign, CampaignVersion.version)).all()
    assert sorted(rows) == sorted((key, 1) for key in rt.campaigns.folders)
    assert rt.campaigns[BUNDLE].version == 1 and rt.campaigns[BUNDLE].files is not None
    assert [s.subject for s in rt.campaigns[BUNDLE].steps] == [s.subject for s in rt.campaigns.folders[BUNDLE].steps]

    toml = root / BUNDLE / "campaign.toml"
    toml.write_text(toml.read_text().replace('send_hour = 9', 'send_hour = 8', 1))
    deployed = with_settings(runtime, templates_dir=root)
    sync_campaign_folders(deployed)
    assert deployed.campaigns[BUNDLE].version == 2 and deployed.campaigns[BUNDLE].send_hour == 8

    with rt.sessions() as s, s.begin():
        files = dict(deployed.campaigns[BUNDLE].files)
        files["campaign.toml"] = files["campaign.toml"].replace("send_hour = 8", "send_hour = 7", 1)
        versions.publish(s, BUNDLE, files, by="coach@example.org", source="console", now=T0)
    toml.write_text(toml.read_text().replace('send_hour = 8', 'send_hour = 10', 1))
    again = with_settings(runtime, templates_dir=root)
    with again.sessions() as s, s.begin():
        notes = versions.sync_folders(s, again.campaigns.folders, now=T0)
    assert notes == [f"{BUNDLE}: the folder differs from version 3, published in the console by coach@example.org, "
                     f"which is what is sent; `drip campaigns export {BUNDLE}` writes it to the folder, "
                     f"`drip campaigns import {BUNDLE}` publishes the folder instead"]
    again.campaigns.refresh()
    assert again.campaigns[BUNDLE].send_hour == 7
    for r in (rt, deployed, again):
        r.sessions.kw["bind"].dispose()


def test_export_then_import_round_trip_through_a_folder(runtime, tmp_path, monkeypatch):
    """A version published in the console (week-05 in Markdown) exported to a folder: campaign.toml with the new
    subject, week-05.md and no week-05.html/.txt. Edited there and imported, it is the next version, which a
    process sends; importing the same folder again publishes nothing; a folder with a broken step is refused."""
    from service.operator.campaign_editor import StepEdit, apply_step, published_files

    files = apply_step(BUNDLE, published_files(runtime.campaigns[BUNDLE]), "week-05",
                       StepEdit(subject="Week five, in Markdown", delay="7d", markdown="{{ greeting }}\n\nHello.\n"))
    with runtime.sessions() as s, s.begin():
        versions.publish(s, BUNDLE, files, by="coach@example.org", source="console", now=T0)
    monkeypatch.chdir(tmp_path)
    out = copy_templates(tmp_path)
    env = {"DATABASE_URL": runtime.settings.database_url, "DRIP_SECRET_KEY": runtime.settings.secret_key,
           "DRIP_TEMPLATES_DIR": str(out)}
    result = CliRunner().invoke(main, ["campaigns", "export", BUNDLE], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{BUNDLE}: version 1 written to {out / BUNDLE}")
    folder = out / BUNDLE
    assert (folder / "week-05.md").read_text() == "{{ greeting }}\n\nHello.\n"
    assert not (folder / "week-05.html").exists() and not (folder / "week-05.txt").exists()
    steps = tomllib.loads((folder / "campaign.toml").read_text())["steps"]
    assert [s["subject"] for s in steps if s["key"] == "week-05"] == ["Week five, in Markdown"]

    (folder / "week-05.md").write_text("{{ greeting }}\n\nHello from git.\n")
    result = CliRunner().invoke(main, ["campaigns", "import", BUNDLE], env=env)
    assert result.exit_code == 0 and result.output == f"{BUNDLE}: published as version 2\n", result.output
    result = CliRunner().invoke(main, ["campaigns", "import", BUNDLE], env=env)
    assert result.output == f"{BUNDLE}: unchanged\n"
    runtime.campaigns.refresh()
    week5 = runtime.campaigns[BUNDLE].step_by_key("week-05")
    email = sample_email(runtime.preview_composer(), runtime.campaigns[BUNDLE], week5, now=T0)
    assert "Hello from git." in email.text and email.subject == "Week five, in Markdown"

    # An imported version is one someone chose: a later start-up does not replace it with a changed folder.
    (folder / "week-05.md").write_text("{{ greeting }}\n\nEdited, not imported.\n")
    later = with_settings(runtime, templates_dir=out)
    with later.sessions() as s, s.begin():
        notes = versions.sync_folders(s, later.campaigns.folders, now=T0)
        assert [n for n in notes if n.startswith(f"{BUNDLE}:")] == [
            f"{BUNDLE}: the folder differs from version 2, imported by drip campaigns import, which is what is "
            f"sent; `drip campaigns export {BUNDLE}` writes it to the folder, `drip campaigns import {BUNDLE}` "
            "publishes the folder instead"]
    later.sessions.kw["bind"].dispose()

    (folder / "week-05.md").write_text("{{ greeting }}\n\n[a shortened link](https://bit.ly/x)\n")
    result = CliRunner().invoke(main, ["campaigns", "import", BUNDLE], env=env)
    assert result.exit_code == 1 and "nothing imported: 1 content error(s)" in result.output
    assert "URL shortener bit.ly" in result.output
    with runtime.sessions() as s:
        assert s.scalar(select(CampaignVersion.version).order_by(CampaignVersion.version.desc()).limit(1)) == 2


def test_a_worker_picks_up_a_publish_on_its_next_pass(runtime, smtp):
    """Two readers due the same step on different days; a worker running all along sends the first the old
    subject, and after a publish elsewhere the second the new one, with no restart."""
    for n, email in enumerate(("first@example.org", "second@example.org")):
        data = parse_signup({"email": email}, campaigns=runtime.campaigns, default_campaign=BUNDLE)
        with runtime.sessions() as s, s.begin():
            signup(s, data, campaign=runtime.campaigns[BUNDLE], meta=ConsentMeta("json"), now=T0 + timedelta(days=n))
    worker = runtime.dispatcher(max_per_day=0)
    old = runtime.campaigns[BUNDLE].step_by_key("week-01").subject
    for day in range(9):
        worker.run_pass(T0 + timedelta(days=day))
        if day == 7:  # first@'s week-01 went out today; second@'s is due tomorrow
            other = with_settings(runtime)
            files = dict(other.campaigns[BUNDLE].files or versions.folder_files(other.campaigns[BUNDLE].directory))
            files["campaign.toml"] = files["campaign.toml"].replace(old, "Week one, rewritten")
            with other.sessions() as s, s.begin():
                versions.publish(s, BUNDLE, files, by="coach@example.org", source="console", now=T0)
            other.sessions.kw["bind"].dispose()
    subjects = {m["To"]: m["Subject"] for m in smtp.handler.messages() if "week" in m["Subject"].lower()
                or m["Subject"] in (old, "Week one, rewritten")}
    assert subjects == {"first@example.org": old, "second@example.org": "Week one, rewritten"}


def test_campaign_toml_written_back_reads_as_the_same_campaign():
    """campaign.toml written by the console reads back as the same values for every shipped campaign, and for
    text with quotes, backslashes, newlines, tabs and non-ASCII letters."""
    from service.campaigns.toml_text import dumps

    for path in sorted((ROOT / "email_templates").glob("*/campaign.toml")):
        data = tomllib.loads(path.read_text())
        assert tomllib.loads(dumps(data)) == data, path
    tricky = {"title": 'Say "hi" \\ there', "why": "line one\nline two\ttab, café 😀", "send_hour": 9,
              "double_opt_in": True, "send_days": ["mon", "thu"],
              "utm": {"source": "a", "medium": "b", "campaign": "c"},
              "thank_you": {"title": "T", "body": "B"}, "steps": [{"key": "welcome", "delay": "0", "subject": "S"}]}
    assert tomllib.loads(dumps(tricky)) == tricky
