"""`drip import-subscribers` (validation report, no duplicate enrollments, consent "import:<file>",
--skip-welcome) and `drip export-subscribers` (CSV)."""
from __future__ import annotations

import csv
import io

from click.testing import CliRunner
from sqlalchemy import func, select

from service.cli import main
from service.core.models import Consent, Enrollment, Subscriber

CSV = """email,name,timezone
ada@example.org,Ada Lovelace,Europe/London
not-an-address,Bad Row,
grace@example.org,Grace Hopper,Mars/Base
ADA@example.org,Ada again,
linus@example.org,,America/New_York
"""


def env_for(runtime, smtp) -> dict[str, str]:
    return {"DATABASE_URL": runtime.settings.database_url, "DRIP_SECRET_KEY": runtime.settings.secret_key,
            "DRIP_EMAIL_URL": smtp.url}


def test_import_reports_bad_rows_and_never_enrolls_twice(runtime, smtp, tmp_path, monkeypatch):
    """Good rows are enrolled with consent "import:<file>"; bad ones are listed as file:line: reason; a
    second import of the same file enrolls nobody again."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "readers.csv").write_text(CSV)
    r = CliRunner().invoke(main, ["import-subscribers", "readers.csv", "--campaign", "glute-guide"],
                           env=env_for(runtime, smtp))
    assert r.exit_code == 1, r.output
    assert "readers.csv:3: email is not valid" in r.output
    assert "readers.csv:4: timezone 'Mars/Base' is not an IANA name" in r.output
    assert "readers.csv:5: duplicate of line 2" in r.output
    assert "import: 2 enrolled, 0 already enrolled, 3 refused" in r.output
    assert "imported 5/5 rows" in r.output  # the progress line (stderr, mixed in by CliRunner)
    with runtime.sessions() as s:
        assert sorted(s.scalars(select(Subscriber.email))) == ["ada@example.org", "linus@example.org"]
        assert {c.source for c in s.scalars(select(Consent))} == {"import:readers.csv"}
        assert s.scalar(select(Subscriber.timezone).where(Subscriber.email == "ada@example.org")) == "Europe/London"
    again = CliRunner().invoke(main, ["import-subscribers", "readers.csv", "--campaign", "glute-guide"],
                               env=env_for(runtime, smtp))
    assert "import: 0 enrolled, 2 already enrolled, 3 refused" in again.output
    with runtime.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Enrollment)) == 2
        assert s.scalar(select(func.count()).select_from(Consent)) == 2


def test_skip_welcome_starts_at_the_second_step(runtime, smtp, tmp_path, monkeypatch):
    """--skip-welcome: the first pass sends nothing; the enrollment waits for week-01 at its usual delay."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.csv").write_text("email\nkeep@example.org\n")
    r = CliRunner().invoke(main, ["import-subscribers", "r.csv", "--campaign", "back-pain-bundle",
                                  "--skip-welcome"], env=env_for(runtime, smtp))
    assert r.exit_code == 0, r.output
    assert runtime.dispatcher().run_pass().sent == 0
    with runtime.sessions() as s:
        e = s.scalars(select(Enrollment)).one()
    assert (e.next_step, e.next_step_key) == (1, "week-01")


def test_import_refuses_a_file_without_an_email_column_or_an_unknown_campaign(runtime, smtp, tmp_path,
                                                                             monkeypatch):
    """No `email` header, or a campaign that does not exist: a clear error, nothing imported."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.csv").write_text("address\nx@example.org\n")
    r = CliRunner().invoke(main, ["import-subscribers", "x.csv", "--campaign", "glute-guide"],
                           env=env_for(runtime, smtp))
    assert r.exit_code == 1 and "'email' column" in r.output
    r = CliRunner().invoke(main, ["import-subscribers", "x.csv", "--campaign", "nope"], env=env_for(runtime, smtp))
    assert r.exit_code == 2 and "no campaign 'nope'" in r.output
    with runtime.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Subscriber)) == 0


def test_export_writes_every_subscriber_as_csv(runtime, smtp, tmp_path, monkeypatch):
    """export-subscribers prints a header and one row per reader with their campaigns."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.csv").write_text("email,name\nada@example.org,Ada\nbob@example.org,Bob\n")
    CliRunner().invoke(main, ["import-subscribers", "r.csv", "--campaign", "glute-guide"], env=env_for(runtime, smtp))
    r = CliRunner().invoke(main, ["export-subscribers"], env=env_for(runtime, smtp))
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert [(x["email"], x["name"], x["campaigns"]) for x in rows] == [
        ("ada@example.org", "Ada", "glute-guide:active"), ("bob@example.org", "Bob", "glute-guide:active")]
    r = CliRunner().invoke(main, ["export-subscribers", "--out", "all.csv"], env=env_for(runtime, smtp))
    assert r.exit_code == 0 and (tmp_path / "all.csv").read_text().startswith("email,name,timezone,status")
