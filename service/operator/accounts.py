"""Operator accounts and API tokens.

Passwords are hashed with scrypt (hashlib, N=2**14, r=8, p=1) and a per-user salt; API tokens are
random and only their SHA-256 is stored. Failed logins are counted in the database so the throttle
holds across every web process.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from service.core.models import ApiToken, LoginAttempt, User

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD = 10
LOGIN_WINDOW = timedelta(minutes=15)
LOGIN_MAX_FAILURES = 5


class AccountError(ValueError):
    pass


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


# A real hash to compare against when the address is unknown, so timing does not reveal accounts.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def _address(email: str) -> str:
    try:
        return validate_email(email, check_deliverability=False, test_environment=True).normalized.lower()
    except EmailNotValidError as exc:
        raise AccountError(f"not a valid email address: {exc}") from None


def add_user(session: Session, email: str, password: str, *, now: datetime, reset_password: bool = False) -> User:
    """A new operator. An address that already has an account is refused unless `reset_password` says the
    caller means to give it a new password (the console and `drip users add --reset-password`): adding
    someone who exists must never quietly change how they log in. A reset also re-enables a disabled account."""
    address = _address(email)
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"password must be at least {MIN_PASSWORD} characters")
    user = session.scalar(select(User).where(User.email == address))
    if user is None:
        user = User(email=address, password_hash=hash_password(password), created_at=now)
        session.add(user)
    elif not reset_password:
        raise AccountError(f"{address} already has an account; to give it a new password, reset it explicitly")
    else:
        user.password_hash = hash_password(password)
        user.disabled_at = None
    session.flush()
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.email)))


def set_disabled(session: Session, user_id: int, disabled: bool, *, by: User, now: datetime) -> User:
    """Disable (or enable again) an operator. A disabled operator cannot log in, and the console refuses a
    session they still hold on its next request. Nobody disables their own account: the last one in would
    lock everyone out."""
    user = session.get(User, user_id)
    if user is None:
        raise AccountError("no such operator")
    if disabled and user.id == by.id:
        raise AccountError("you cannot disable your own account; ask another operator")
    user.disabled_at = (user.disabled_at or now) if disabled else None
    session.flush()
    return user


def set_timezone(session: Session, user: User, name: str | None) -> None:
    """The zone the console shows this operator's times in; empty means UTC."""
    from service.campaigns.schedule import valid_timezone

    name = (name or "").strip() or None
    if name is not None and not valid_timezone(name):
        raise AccountError("not a time zone: use an IANA name such as Europe/Paris")
    user.timezone = name
    session.flush()


def throttled(session: Session, keys: list[str], now: datetime) -> bool:
    count = session.scalar(select(func.count()).select_from(LoginAttempt).where(
        LoginAttempt.key.in_(keys), LoginAttempt.created_at > now - LOGIN_WINDOW))
    return (count or 0) >= LOGIN_MAX_FAILURES


def authenticate(session: Session, email: str, password: str, *, client: str, now: datetime) -> User | None:
    """The user, or None. Counts failures per address and per client; refuses while throttled."""
    address = email.strip().lower()[:320]
    keys = [f"user:{address}", f"ip:{client}"]
    if throttled(session, keys, now):
        return None
    user = session.scalar(select(User).where(User.email == address))
    ok = (check_password(password, user.password_hash if user else _DUMMY_HASH) and user is not None
          and user.disabled_at is None)
    if not ok:
        session.add_all([LoginAttempt(key=k, created_at=now) for k in keys])
        return None
    session.execute(delete(LoginAttempt).where(LoginAttempt.key == keys[0]))
    user.last_login_at = now
    return user


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, name: str, *, now: datetime) -> str:
    name = " ".join(name.split())[:100]
    if not name:
        raise AccountError("a token needs a name")
    token = "drip_" + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, token_hash=token_hash(token), created_at=now))
    session.flush()
    return token


def check_token(session: Session, token: str, *, now: datetime) -> ApiToken | None:
    if not token or len(token) > 200:
        return None
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash(token),
                                                ApiToken.revoked_at.is_(None)))
    if row is not None:
        row.last_used_at = now
    return row


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke_token(session: Session, name_or_id: str, *, now: datetime) -> list[ApiToken]:
    """Revoke the token with this id, or every live token with this name. Returns those revoked now.

    Revocation is immediate for every process: `check_token` reads `revoked_at` on each request.
    """
    ref = name_or_id.strip()
    q = select(ApiToken).where(ApiToken.revoked_at.is_(None))
    q = q.where(ApiToken.id == int(ref)) if ref.isdigit() and len(ref) < 10 else q.where(ApiToken.name == ref)
    rows = list(session.scalars(q))
    for row in rows:
        row.revoked_at = now
    session.flush()
    return rows
