"""Every mistake an operator can make at start ends in ONE line naming the variable or file, what is wrong
and the fix: never a traceback, never a secret. Table-driven: every variable of the README's settings
table with a wrong value, a database that was never upgraded or is older than this Drip (every command
refuses but `drip db upgrade`), one that cannot be reached, a CSV in another encoding, a broken campaign."""
from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from service.cli import main
from service.core.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
KEY = "k" * 32
SECRET_WORD = "hunter2secret"  # a password planted in URLs: it must never be printed


def readme_settings() -> set[str]:
    """Every variable named in the first column of the README's Configuration table."""
    section = (ROOT / "README.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for row in section.splitlines():
        if row.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1]))
    return names


# (variable, wrong value, what the line must say). Values that carry a secret use SECRET_WORD.
MISTAKES = [
    ("DATABASE_URL", f"mysql://drip:{SECRET_WORD}@db/drip", "expected sqlite:///path or postgresql://"),
    ("DATABASE_URL", f"postgresql://drip:{SECRET_WORD}/x@db:5432/drip", "percent-encode"),
    ("DATABASE_URL", "postgresql://drip@db:5432", "no database name"),
    ("DRIP_INSTANCE_DIR", "README.md", "is a file, not a folder"),
    ("DRIP_EMAIL_URL", f"smtpp://ops:{SECRET_WORD}@relay:587", "unknown transport"),
    ("DRIP_EMAIL_URL", f"smtp://ops:{SECRET_WORD}@relay:58x7", "cannot read host:port"),
    ("DRIP_EMAIL_URL", f"smtp://ops:{SECRET_WORD}@:587", "no host"),
    ("DRIP_EMAIL_URL", f"sendgrid://{SECRET_WORD}@?endpoint=ftp://x", "endpoint must be a plain https URL"),
    ("DRIP_EMAIL_URL", f"ses://AKID:{SECRET_WORD}@eu-west-1?endpoint=https%3A%2F%2Fproxy.example.org%2Fses%3Fa%3D1",
     "without a ?query"),
    ("DRIP_EMAIL_URL", "ses://AKIDEXAMPLE@eu-west-1", "needs the secret access key"),
    ("DRIP_BASE_URL", "drip.example.org", "expected an http(s) URL"),
    ("DRIP_SECRET_KEY", "tooshort", "too short (8 characters, at least 32"),
    ("DRIP_FROM", "news at example", "is not an email address"),
    ("DRIP_TICK_SECONDS", "soon", "expected a number"),
    ("DRIP_SIGNUP_RATE_LIMIT", "lots", "expected e.g. '10/minute'"),
    ("DRIP_SIGNUP_ADDRESS_RATE_LIMIT", "10 per hour", "expected e.g. '10/minute'"),
    ("DRIP_RATE_LIMIT_STORAGE", "memcached://127.0.0.1", "expected 'database' or redis://"),
    ("DRIP_CORS_ORIGINS", "https://*.example.org", "no wildcard"),
    ("DRIP_RECORD_IP", "maybe", "expected on or off"),
    ("DRIP_EVENT_RETENTION_DAYS", "7", "at least 30"),
    ("DRIP_TRUSTED_PROXIES", "one", "expected a whole number"),
    ("DRIP_DEFAULT_CAMPAIGN", "no-such-campaign", "no campaign named 'no-such-campaign'"),
    ("DRIP_LEASE_SECONDS", "1", "must be at least 5"),
    ("DRIP_BATCH_SIZE", "1.5", "expected a whole number"),
    ("DRIP_MAX_ATTEMPTS", "0", "must be at least 1"),
    ("DRIP_UNSUBSCRIBE_MAILTO", "Unsubscribe <u@example.org>", "is not an email address"),
    ("DRIP_TEMPLATES_DIR", "no/such/folder", "is not a folder"),
    ("DRIP_DKIM_DOMAIN", "example.org", "must be set together with"),
    ("DRIP_DKIM_SELECTOR", "s1", "must be set together with"),
    ("DRIP_DKIM_KEY_FILE", "no-such-key.pem", "must be set together with"),
    ("DRIP_DKIM_SELECTOR_2", "s2", "must be set together with"),
    ("DRIP_DKIM_KEY_FILE_2", "no-such-key.pem", "must be set together with"),
    ("DRIP_FEEDBACK_ID_SENDER", "a:b", "no colon allowed"),
    ("DRIP_REPLY_TO", "reply here", "is not an email address"),
    ("DRIP_SEND_LIMITS", "week=4", "expected e.g. 'hour=500,day=5000'"),
    ("DRIP_WARMUP", "tomorrow:50", "expected START-DATE:FIRST-DAY-CAP"),
    ("DRIP_MAX_EMAILS_PER_DAY", "-1", "must be at least 0"),
    ("DRIP_CONFIRM_EXPIRY_DAYS", "a week", "expected a whole number"),
    ("DRIP_CONFIRM_COOLDOWN_MINUTES", "0", "must be at least 1"),
    ("DRIP_DNS_SERVER", "dns.example.org", "expected IP or IP:PORT"),
    ("DRIP_SENDGRID_WEBHOOK_KEY", "not-a-key", "not a base64 DER public key"),
    ("DRIP_POSTMARK_WEBHOOK_USER", "postmark", "DRIP_POSTMARK_WEBHOOK_PASSWORD: must be set together"),
    ("DRIP_POSTMARK_WEBHOOK_PASSWORD", SECRET_WORD, "DRIP_POSTMARK_WEBHOOK_USER: must be set together"),
    ("DRIP_RESEND_WEBHOOK_SECRET", SECRET_WORD, "expected the whsec_"),
    ("DRIP_SNS_TOPIC_ARNS", "ses-events", "expected comma-separated topic ARNs"),
    ("DRIP_SNS_CERT_HOSTS", "https://sns.example/x", "expected comma-separated host or host:port"),
    ("DRIP_BOUNCE_DOMAIN", "bounces", "expected a domain"),
    ("DRIP_SOFT_BOUNCE_THRESHOLD", "0", "must be at least 1"),
    ("DRIP_SOFT_BOUNCE_WINDOW_DAYS", "month", "expected a whole number"),
    ("DRIP_DEFERRED_DEADLINE_HOURS", "forever", "expected a number"),
    ("DRIP_TRACKING", "sometimes", "expected on or off"),
    ("DRIP_METRICS_TOKEN", "short1234", "too short (9 characters, at least 32 needed)"),
]
# Free text: any value is a value. Why each cannot be wrong, so a newcomer sees it was thought about.
FREE_TEXT = {
    "DRIP_POSTAL_ADDRESS": "a postal address in any form; unset, `drip serve` warns and `drip doctor` fails",
    "DRIP_MAILGUN_SIGNING_KEY": "Mailgun's signing key is an opaque string of any shape",
}


def test_the_table_covers_every_setting_in_the_readme() -> None:
    """A new setting in the README without a row here (or a reason it is free text) fails this test."""
    covered = {variable for variable, _, _ in MISTAKES} | set(FREE_TEXT)
    assert readme_settings() - covered == set()
    assert covered - readme_settings() == set(), "a row names a variable the README does not document"


@pytest.fixture
def migrated(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'drip.sqlite3'}"
    upgrade(url)
    return url


def drip(args: list[str], env: dict[str, str], input: str | None = None):
    return CliRunner().invoke(main, args, env=env, input=input)


def assert_one_line(result, *fragments: str) -> str:
    """Exit 1 and exactly one line on the terminal, holding each fragment; no traceback, no planted secret."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert SECRET_WORD not in result.output
    return lines[0]


@pytest.mark.parametrize(("variable", "value", "says"), MISTAKES, ids=[f"{v}={x}" for v, x, _ in MISTAKES])
def test_each_wrong_setting_prints_one_line_naming_it(variable, value, says, migrated, tmp_path, monkeypatch) -> None:
    """`drip tick` with one wrong setting: one line that starts with the variable and says what is wrong."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    env = {"DATABASE_URL": migrated, "DRIP_SECRET_KEY": KEY, "DRIP_EMAIL_URL": f"file://{tmp_path / 'out'}",
           "DRIP_INSTANCE_DIR": str(tmp_path / "instance"), variable: value}
    if variable == "DRIP_INSTANCE_DIR":
        env[variable] = str(ROOT / value)
    line = assert_one_line(drip(["tick"], env), says)
    assert re.match(r"Error: (invalid campaign: )?DRIP_|Error: DATABASE_URL", line), line
    assert variable in line or (variable.startswith("DRIP_DKIM") and "DRIP_DKIM" in line), line
    assert not (tmp_path / "out").exists(), "nothing was sent or written before the refusal"


def test_a_setting_that_needs_a_missing_extra_names_the_extra(migrated, tmp_path, monkeypatch) -> None:
    """Without the redis package (not in the runtime install) a Redis URL says which extra to install;
    ses:// needs no extra (Drip signs SES's requests itself; that no service module imports botocore is
    checked in a fresh interpreter by test_dependencies)."""
    monkeypatch.chdir(tmp_path)
    base = {"DATABASE_URL": migrated, "DRIP_SECRET_KEY": KEY}
    monkeypatch.setitem(sys.modules, "botocore", None)  # what Python does when a package is not installed
    monkeypatch.setitem(sys.modules, "redis", None)
    ses = drip(["tick"], {**base, "DRIP_EMAIL_URL": f"ses://AKID:{SECRET_WORD}@eu-west-1"})
    assert ses.exit_code == 0 and SECRET_WORD not in ses.output, ses.output
    assert_one_line(drip(["tick"], {**base, "DRIP_RATE_LIMIT_STORAGE": "redis://127.0.0.1:6379/0"}),
                    "DRIP_RATE_LIMIT_STORAGE: a Redis URL needs the optional 'redis' extra",
                    "pip install -e '.[redis]'")


def test_a_copy_installed_without_its_source_folder_says_how_to_install_it(tmp_path, monkeypatch) -> None:
    """`pip install .` (not editable) puts the code in site-packages without the migrations beside it: every
    command that opens a database says so in one line, with the install that works, instead of Alembic's
    traceback about a folder it cannot find."""
    target = tmp_path / "site-packages"  # what the wheel holds: the `service` package alone (pyproject's find)
    shutil.copytree(ROOT / "service", target / "service", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(target), "DRIP_SECRET_KEY": KEY,
           "DATABASE_URL": f"sqlite:///{tmp_path / 'drip.sqlite3'}", "DRIP_INSTANCE_DIR": str(tmp_path / "instance")}
    for args, says in ((["db", "upgrade"], "has no migrations beside its code"),
                       (["tick"], "Drip runs from its source folder")):
        run = subprocess.run([sys.executable, "-m", "service", *args], env=env, capture_output=True, text=True,
                             timeout=120)
        lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
        assert run.returncode == 1 and len(lines) == 1, run.stdout + run.stderr
        assert says in lines[0] and "make install" in lines[0], lines[0]
        assert "Traceback" not in run.stderr


# -- the database ---------------------------------------------------------------------------------------
DATABASE_FREE = {("db", "upgrade"), ("campaigns", "check"), ("preview",), ("send-test",), ("doctor",)}
ARGS = {  # what each command that uses the database is given to get as far as opening it
    ("tick",): [], ("users", "add"): ["ops@example.org"], ("tokens", "create"): ["ci"], ("tokens", "list"): [],
    ("tokens", "revoke"): ["ci"], ("bounces",): ["--maildir", "{tmp}"], ("campaigns", "diff"): [],
    ("campaigns", "import"): [], ("campaigns", "export"): ["--out", "{tmp}/export"], ("log",): [],
    ("stats",): [], ("forecast",): [],
    ("prune",): ["--days", "90"], ("sending", "status"): [], ("sending", "resume"): [],
    ("import-subscribers",): ["{tmp}/r.csv", "--campaign", "glute-guide"], ("export-subscribers",): [],
    ("subscribers", "export"): ["a@example.org"], ("subscribers", "erase"): ["a@example.org", "--yes"],
}
LONG_RUNNING = [("serve",), ("web",), ("worker",)]  # run as real processes: a failure to refuse would not end


def leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from leaf_commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


def test_every_command_is_in_the_database_table() -> None:
    """A new command must say whether it uses the database (and so refuses an old one) or not."""
    main.load_extensions()  # the commands of service/commands/ register on first use
    assert set(leaf_commands(main)) == DATABASE_FREE | set(ARGS) | set(LONG_RUNNING)


@pytest.fixture
def blank_database(backend: str, tmp_path: Path, request: pytest.FixtureRequest):
    """A database with no tables: a SQLite file, or a new PostgreSQL database dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
        return
    base = os.environ["DRIP_TEST_POSTGRES_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
    name = f"drip_mistakes_{secrets.token_hex(4)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield base.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def previous_revision() -> str:
    from alembic.script import ScriptDirectory

    from service.core.migrate import alembic_config

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return script.get_revision(script.get_current_head()).down_revision


def cli_process(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "service", *args], env=full, cwd=cwd, capture_output=True,
                          text=True, timeout=90)


@pytest.mark.slow
def test_every_command_refuses_a_database_that_needs_upgrading(blank_database, tmp_path, monkeypatch) -> None:
    """Never upgraded, then one migration behind: every command that uses the database (serve, web and worker
    too) refuses with one line saying `drip db upgrade`; `drip db upgrade` works and then so do they."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.csv").write_text("email\nreader@example.org\n")
    env = {"DATABASE_URL": blank_database, "DRIP_SECRET_KEY": KEY, "DRIP_EMAIL_URL": f"file://{tmp_path / 'out'}"}
    for state, says in (("never upgraded", "has no Drip tables yet; run `drip db upgrade`"),
                        ("one migration behind", "older than this Drip needs")):
        if state == "one migration behind":
            upgrade(blank_database, previous_revision())
        for command, args in ARGS.items():
            args = [a.replace("{tmp}", str(tmp_path)) for a in args]
            result = drip([*command, *args], env, input="a long enough password\n")
            assert_one_line(result, "DATABASE_URL: the database at", says, "drip db upgrade")
        for command in LONG_RUNNING:
            proc = cli_process([*command, "--port", "0"] if command != ("worker",) else [*command], env, tmp_path)
            assert proc.returncode == 1, (command, proc.stderr)
            assert proc.stderr.strip().splitlines()[-1].startswith("Error: DATABASE_URL: the database at")
            assert "Traceback" not in proc.stderr and "Drip is running" not in proc.stderr
    upgraded = drip(["db", "upgrade"], env)
    assert upgraded.exit_code == 0 and "database at head" in upgraded.output, upgraded.output
    assert drip(["stats"], env).exit_code == 0
    assert drip(["tick"], env).exit_code == 0


def test_a_database_from_a_newer_drip_is_refused(migrated, tmp_path, monkeypatch) -> None:
    """A revision this Drip does not know (a newer Drip migrated it): say so, and never downgrade."""
    monkeypatch.chdir(tmp_path)
    engine = create_engine(migrated)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
    engine.dispose()
    assert_one_line(drip(["stats"], {"DATABASE_URL": migrated, "DRIP_SECRET_KEY": KEY}),
                    "0099_from_the_future, which this Drip does not know")


def test_an_unreachable_database_is_one_line_without_its_password(tmp_path, monkeypatch) -> None:
    """PostgreSQL not listening, and a SQLite path through a file: one line each, naming DATABASE_URL."""
    monkeypatch.chdir(tmp_path)
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    url = f"postgresql://drip:{SECRET_WORD}@127.0.0.1:{port}/drip"
    for command in (["stats"], ["db", "upgrade"]):
        line = assert_one_line(drip(command, {"DATABASE_URL": url, "DRIP_SECRET_KEY": KEY}),
                               "DATABASE_URL: cannot reach the database at", "drip:***@127.0.0.1")
        assert "check that the server is running" in line
    (tmp_path / "afile").write_text("")
    for command in (["stats"], ["db", "upgrade"]):
        assert_one_line(drip(command, {"DATABASE_URL": f"sqlite:///{tmp_path}/afile/drip.sqlite3"}),
                        f"DATABASE_URL: cannot use {tmp_path}/afile", "is a file where a folder is needed")



def test_a_transaction_the_database_rolled_back_is_not_called_unreachable() -> None:
    """A deadlock or serialization failure (PostgreSQL's class 40) means the server was reached and rolled
    one transaction back: the line says so and to run the command again, not to check the server."""
    import psycopg.errors
    from sqlalchemy.exc import OperationalError

    from service.commands.context import operator_error

    url = f"postgresql://drip:{SECRET_WORD}@127.0.0.1:5432/drip"
    for orig in (psycopg.errors.DeadlockDetected("deadlock detected"),
                 psycopg.errors.SerializationFailure("could not serialize access")):
        line = operator_error(OperationalError("SELECT 1", {}, orig), url)
        assert line is not None and line.startswith("DATABASE_URL: the database at postgresql://drip:***@"), line
        assert str(orig) in line and "run the command again" in line and "check that the server" not in line
        assert SECRET_WORD not in line
    refused = OperationalError("SELECT 1", {}, psycopg.errors.OperationalError("connection refused"))
    assert "cannot reach the database" in (operator_error(refused, url) or "")

# -- files the operator hands over ----------------------------------------------------------------------
def test_a_broken_campaign_folder_is_one_line_naming_the_file(migrated, tmp_path, monkeypatch) -> None:
    """A campaign.toml with a syntax error stops `drip tick`, `drip campaigns check` and `drip serve` with
    the file, line and column."""
    monkeypatch.chdir(tmp_path)
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "email_templates", templates)
    toml = templates / "glute-guide" / "campaign.toml"
    toml.write_text(toml.read_text() + "\nthis line = = broken\n")
    env = {"DATABASE_URL": migrated, "DRIP_SECRET_KEY": KEY, "DRIP_TEMPLATES_DIR": str(templates)}
    for command in (["tick"], ["campaigns", "check"], ["stats"]):
        assert_one_line(drip(command, env), f"{toml}:", "line")
    proc = cli_process(["serve", "--port", "0"], env, tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"Error: invalid campaign: {toml}:")


def test_a_step_template_that_does_not_compile_stops_the_commands_that_send(migrated, tmp_path,
                                                                           monkeypatch) -> None:
    """A Jinja syntax error in a step's HTML: `drip tick` and `drip worker` refuse with the file and line
    (instead of starting and failing every send of that step); `drip campaigns check` reports it too."""
    monkeypatch.chdir(tmp_path)
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "email_templates", templates)
    html = templates / "glute-guide" / "welcome.html"
    html.write_text(html.read_text() + "\n<p>{{ reader.name </p>\n")
    env = {"DATABASE_URL": migrated, "DRIP_SECRET_KEY": KEY, "DRIP_TEMPLATES_DIR": str(templates),
           "DRIP_EMAIL_URL": f"file://{tmp_path / 'out'}"}
    assert_one_line(drip(["tick"], env), f"invalid campaign: {html}:", "drip campaigns check")
    proc = cli_process(["worker"], env, tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"Error: invalid campaign: {html}:")
    check = drip(["campaigns", "check"], env)
    assert check.exit_code == 1 and "glute-guide" in check.output and "does not render" in check.output
    assert not (tmp_path / "out").exists()


def test_a_template_broken_after_a_good_start_is_refused_at_every_start_until_fixed(migrated, tmp_path,
                                                                                   monkeypatch) -> None:
    """A start with the same campaign files as the last good one skips compiling them (a `drip tick` from cron
    with nothing due loads no template engine); an edit that breaks a template is still refused, at the next
    start and every one after it, until it is fixed. Nothing is sent meanwhile."""
    monkeypatch.chdir(tmp_path)
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "email_templates", templates)
    env = {"DATABASE_URL": migrated, "DRIP_SECRET_KEY": KEY, "DRIP_TEMPLATES_DIR": str(templates),
           "DRIP_EMAIL_URL": f"file://{tmp_path / 'out'}"}
    assert drip(["tick"], env).exit_code == 0  # compiles every campaign once and records it
    # The next start, in a process of its own: nothing due, so neither the composer nor Jinja is imported.
    probe = ("import sys; from service.cli import main\n"
             "try:\n    main(['tick'])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'jinja2', 'markdown_it', 'dkim', 'dns', "
             "'cryptography', 'alembic', 'flask', 'email_validator'}"
             " | {m for m in sys.modules if m.startswith('service.commands.') and m != 'service.commands.context'}))")
    proc = subprocess.run([sys.executable, "-c", probe], env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
                          cwd=tmp_path, capture_output=True, text=True, timeout=90)
    # ... nor email_validator (the campaigns' From lines are plain) nor the other commands' modules
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "[]", (proc.stdout, proc.stderr)
    html = templates / "glute-guide" / "welcome.html"
    good = html.read_text()
    html.write_text(good + "\n<p>{{ reader.name </p>\n")
    for _ in range(2):  # a refused start records nothing: the next one compiles and refuses again
        assert_one_line(drip(["tick"], env), f"invalid campaign: {html}:", "drip campaigns check")
    html.write_text(good)
    assert drip(["tick"], env).exit_code == 0
    assert not (tmp_path / "out").exists()


def test_a_dotenv_file_that_is_not_utf8_is_one_line(tmp_path, monkeypatch) -> None:
    """A .env saved in Latin-1 by an old editor: the file is named with the fix, not a UnicodeDecodeError."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_bytes("DRIP_POSTAL_ADDRESS=1 rue de l'Église\n".encode("latin-1"))
    assert_one_line(drip(["tick"], {}), ".env: not UTF-8 text", "save it as UTF-8")


LATIN1_CSV = "email,name,timezone\nzoe@example.org,Zoé Lefèvre,Europe/Paris\nnot-an-address,Bad Row,\n"


def import_env(runtime) -> dict[str, str]:
    return {"DATABASE_URL": runtime.settings.database_url, "DRIP_SECRET_KEY": runtime.settings.secret_key,
            "DRIP_EMAIL_URL": runtime.settings.email_url}


def imported_names(runtime) -> list[str]:
    from sqlalchemy import select

    from service.core.models import Subscriber

    with runtime.sessions() as session:
        return sorted(session.scalars(select(Subscriber.name)))


@pytest.mark.parametrize("encoding", ["cp1252", "utf-16", "utf-8-sig"])
def test_a_csv_in_another_encoding_is_detected_and_bad_rows_still_listed(encoding, runtime, tmp_path,
                                                                           monkeypatch) -> None:
    """Excel's Windows 'CSV' (Windows-1252), UTF-16 with a BOM, UTF-8 with a BOM: names arrive intact and the
    bad row is listed as file:line: reason, as for UTF-8."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "readers.csv").write_bytes(LATIN1_CSV.encode(encoding))
    result = drip(["import-subscribers", "readers.csv", "--campaign", "glute-guide"], import_env(runtime))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "readers.csv:3: email is not valid" in result.output
    assert "import: 1 enrolled, 0 already enrolled, 1 refused" in result.output
    assert ("not UTF-8; reading it as cp1252" in result.output) == (encoding == "cp1252")
    assert imported_names(runtime) == ["Zoé Lefèvre"]


def test_csv_encoding_can_be_named_and_a_wrong_one_is_one_line(runtime, tmp_path, monkeypatch) -> None:
    """--encoding latin-1 reads a Latin-1 file; --encoding utf-8 on it stops before any row with one line
    saying which byte and what to pass; an unknown encoding name is refused."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "readers.csv").write_bytes(LATIN1_CSV.encode("latin-1"))
    args = ["import-subscribers", "readers.csv", "--campaign", "glute-guide", "--encoding"]
    wrong = drip([*args, "utf-8"], import_env(runtime))
    assert_one_line(wrong, "readers.csv: not UTF-8 text (byte 0xe9", "pass --encoding")
    assert imported_names(runtime) == []
    unknown = drip([*args, "klingon"], import_env(runtime))
    assert unknown.exit_code == 2 and "unknown encoding 'klingon'" in unknown.output
    right = drip([*args, "latin-1"], import_env(runtime))
    assert "import: 1 enrolled" in right.output and imported_names(runtime) == ["Zoé Lefèvre"]
