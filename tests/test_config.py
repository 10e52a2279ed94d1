"""Settings from the environment: defaults, fail-fast errors that name the variable, the generated key."""
from __future__ import annotations

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
