"""Settings from the environment: defaults, fail-fast errors that name the variable, the generated key."""
from __future__ import annotations

import secrets

import pytest

from service.core.config import ConfigError, RateLimit, Settings, _instance_secret


def test_embedded_defaults(tmp_path) -> None:
    """With nothing set: SQLite and the outbox in the project folder, a generated key, a placeholder address."""
    s = Settings.from_env({"DRIP_INSTANCE_DIR": str(tmp_path / "instance")})
    assert s.database_url == f"sqlite:///{tmp_path / 'instance' / 'drip.sqlite3'}"
    assert s.email_url.startswith("file://") and s.email_url.endswith("/outbox")
    assert len(s.secret_key) >= 32 and s.postal_address_is_placeholder
    assert Settings.from_env({"DRIP_INSTANCE_DIR": str(tmp_path / "instance")}).secret_key == s.secret_key
    assert "secret" not in repr(s) and s.secret_key not in repr(s)


@pytest.mark.parametrize("env,variable", [
    ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
    ({"DRIP_BASE_URL": "ftp://x"}, "DRIP_BASE_URL"),
    ({"DRIP_TICK_SECONDS": "soon"}, "DRIP_TICK_SECONDS"),
    ({"DRIP_SIGNUP_RATE_LIMIT": "lots"}, "DRIP_SIGNUP_RATE_LIMIT"),
    ({"DATABASE_URL": "postgresql://u@127.0.0.1/db"}, "DRIP_SECRET_KEY"),
    ({"DRIP_SECRET_KEY": "short"}, "DRIP_SECRET_KEY"),
])
def test_bad_values_fail_fast_naming_the_variable(env: dict, variable: str) -> None:
    """A bad or missing value stops start-up with the variable's name in the message."""
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({"DRIP_SECRET_KEY": "k" * 32, **env} if variable != "DRIP_SECRET_KEY" else env)


def test_passwords_never_in_repr() -> None:
    """Settings can be logged: URLs with credentials and the key stay out of repr()."""
    s = Settings.from_env({"DRIP_SECRET_KEY": "k" * 32, "DRIP_EMAIL_URL": "smtp://u:hunter2hunter2@127.0.0.1:25",
                           "DATABASE_URL": "postgresql://u:pgpass123@127.0.0.1/db"})
    assert "hunter2hunter2" not in repr(s) and "pgpass123" not in repr(s)


def test_generated_key_is_shared_and_never_empty(tmp_path) -> None:
    """Two starts agree on one key; an emptied key file is refused rather than used."""
    assert _instance_secret(tmp_path) == _instance_secret(tmp_path)
    (tmp_path / "secret_key").write_text("")
    with pytest.raises(ConfigError, match="DRIP_SECRET_KEY"):
        _instance_secret(tmp_path)


def test_rate_limit_syntax() -> None:
    """Rate limits read like '10/minute'; 'off' disables them."""
    assert RateLimit.parse("10/minute") == RateLimit(10, 60)
    assert RateLimit.parse(" 5 / hour ") == RateLimit(5, 3600)
    assert RateLimit.parse("off") is None


# -- secrets in mistyped settings ------------------------------------------------------------------------
MISTYPED_DATABASE_URLS = [
    "postgresq://drip:{pw}@db.internal:5432/drip",          # scheme typo
    "postgresql://drip:{pw}@db.internal:54x2/drip",          # port typo
    "postgresql://drip:{pw}/with-slash@db.internal/drip",    # unencoded / in the password
    "postgresql://drip:{pw}?x@db.internal/drip",             # unencoded ? in the password
    "postgresql://drip:{pw}@db.internal:5432",               # no database name
    "drip:{pw}@db.internal/drip",                            # no scheme at all
]


@pytest.mark.parametrize("template", MISTYPED_DATABASE_URLS)
def test_mistyped_database_url_never_shows_its_password(template: str) -> None:
    """The error names DATABASE_URL and shows the URL with the password as ***, whatever the typo."""
    password = "Pg-" + secrets.token_hex(8)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"DRIP_SECRET_KEY": "k" * 32, "DATABASE_URL": template.format(pw=password)})
    message = str(caught.value)
    assert message.startswith("DATABASE_URL: ") and password not in message and "drip:***@" in message
    assert password[:6] not in message  # not even the part before a / or ?


MISTYPED_EMAIL_URLS = [
    "smtpp://ops:{pw}@relay.example.org:587",                # scheme typo
    "smtp://ops:{pw}@relay.example.org:58x7",                # port typo
    "smtp://ops:{pw}/x@relay.example.org:587",               # unencoded / in the password
    "smtp://ops:{pw}#x@relay.example.org:587",               # unencoded # in the password
    "smtp://ops:{pw}@:587",                                  # no host
    "sendgrid://{pw}@?endpoint=ftp://wrong",                 # an API key in the user part, bad option
    "postmark://{pw}@?timeout=soon",                         # bad timeout
    "ses://AKIDEXAMPLE:{pw}@",                               # no region
]


@pytest.mark.parametrize("template", MISTYPED_EMAIL_URLS)
def test_mistyped_email_url_never_shows_its_password(template: str, tmp_path, monkeypatch) -> None:
    """Settings or the transport built at start refuse it naming DRIP_EMAIL_URL; the password or API key is
    never in the line the operator sees, nor anywhere in `drip tick`'s output."""
    from click.testing import CliRunner

    from service.cli import main
    from service.core.migrate import upgrade

    monkeypatch.chdir(tmp_path)
    password = "Mail-" + secrets.token_hex(8)
    url = template.format(pw=password)
    database = f"sqlite:///{tmp_path / 'drip.sqlite3'}"
    upgrade(database)
    result = CliRunner().invoke(main, ["tick"], env={"DRIP_SECRET_KEY": "k" * 32, "DATABASE_URL": database,
                                                     "DRIP_EMAIL_URL": url})
    assert result.exit_code == 1 and result.output.startswith("Error: DRIP_EMAIL_URL: "), result.output
    assert len(result.output.strip().splitlines()) == 1
    assert password not in result.output and password[:7] not in result.output


@pytest.mark.parametrize("length", [8, 16, 31])
def test_secret_key_shorter_than_32_characters_is_refused(length: int) -> None:
    """The documented minimum is 32 characters: a shorter DRIP_SECRET_KEY stops start-up, saying how long it
    is (never what it is) and how to make a good one."""
    key = secrets.token_hex(16)[:length]
    with pytest.raises(ConfigError, match=r"DRIP_SECRET_KEY: too short \(\d+ characters, at least 32") as caught:
        Settings.from_env({"DRIP_SECRET_KEY": key})
    assert key not in str(caught.value) and "secrets.token_hex(32)" in str(caught.value)
    assert Settings.from_env({"DRIP_SECRET_KEY": secrets.token_hex(16)}).secret_key  # 32 is enough


def test_generated_secret_key_still_works_without_the_variable(tmp_path) -> None:
    """No DRIP_SECRET_KEY with SQLite: the key generated into instance/ is long enough and kept across starts."""
    first = Settings.from_env({"DRIP_INSTANCE_DIR": str(tmp_path / "inst")}).secret_key
    assert len(first) >= 32 and Settings.from_env({"DRIP_INSTANCE_DIR": str(tmp_path / "inst")}).secret_key == first


def test_dotenv_file_is_read_with_quotes_exports_and_comments(tmp_path, monkeypatch) -> None:
    """.env as python-dotenv reads it; the environment wins over the file; a key with no value is left out."""
    monkeypatch.chdir(tmp_path)
    for name in ("DRIP_POSTAL_ADDRESS", "DRIP_FROM", "DRIP_TICK_SECONDS", "DRIP_REPLY_TO"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".env").write_text(
        "# Drip settings\n"
        "export DRIP_POSTAL_ADDRESS=\"1 Main St, Springfield # not a comment inside quotes\"\n"
        "DRIP_FROM='Ana <ana@example.org>'  # a comment after the value\n"
        "DRIP_TICK_SECONDS=7\n"
        "DRIP_REPLY_TO\n"
        f"DRIP_SECRET_KEY={'s' * 40}\n")
    monkeypatch.setenv("DRIP_TICK_SECONDS", "3")
    monkeypatch.setenv("DRIP_INSTANCE_DIR", str(tmp_path / "inst"))
    s = Settings.from_env()
    assert s.postal_address == "1 Main St, Springfield # not a comment inside quotes"
    assert s.from_address == "Ana <ana@example.org>" and s.tick_seconds == 3 and s.reply_to is None
    assert s.secret_key == "s" * 40


def test_the_email_url_schemes_settings_accept_are_the_transports_there_are() -> None:
    """Settings check DRIP_EMAIL_URL's scheme against a list in core; it must be exactly the transports built."""
    from service.core.config import EMAIL_SCHEMES
    from service.transports import API_TRANSPORTS

    assert set(EMAIL_SCHEMES) == {"file", "smtp", "smtps"} | set(API_TRANSPORTS)
