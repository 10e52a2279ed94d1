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
from collections.abc import Iterable
from datetime import datetime, timedelta

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from service.core.models import ApiToken, LoginAttempt, User

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD = 10
LOGIN_WINDOW = timedelta(minutes=15)
LOGIN_MAX_FAILURES = 5
ACCOUNT_MAX_WAIT = timedelta(minutes=1)
DEVICE_COOKIE_DAYS = 365


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
        end_sessions(user)  # a new password means whoever held the old one is logged out everywhere
        user.disabled_at = None
    session.flush()
    return user


def end_sessions(user: User) -> None:
    """Every console session of this user stops working at its next request, copies of the cookie included:
    a session carries the version it was made under, and the login guard compares it with this one."""
    user.session_version = (user.session_version or 0) + 1


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


def account_wait(session: Session, address: str, now: datetime) -> float:
    """Seconds before a browser the account has never logged in from may try it again: none for the first
    LOGIN_MAX_FAILURES failures in the window, then 1, 2, 4 ... up to ACCOUNT_MAX_WAIT after the latest.
    A backoff slows guessing across many client addresses without a fixed lockout, and the owner's own
    browser (a device cookie) is not subject to it at all."""
    failures, latest = session.execute(select(func.count(), func.max(LoginAttempt.created_at)).where(
        LoginAttempt.key == f"user:{address}", LoginAttempt.created_at > now - LOGIN_WINDOW)).one()
    if (failures or 0) < LOGIN_MAX_FAILURES or latest is None:
        return 0.0
    wait = min(2.0 ** (failures - LOGIN_MAX_FAILURES), ACCOUNT_MAX_WAIT.total_seconds())
    return max(0.0, (latest + timedelta(seconds=wait) - now).total_seconds())


def authenticate(session: Session, email: str, password: str, *, client: str, now: datetime,
                 device: tuple[int, str] | None = None) -> User | None:
    """The user, or None; failures are counted, and while any limit holds even the right password fails.

    - per client address: LOGIN_MAX_FAILURES failures in LOGIN_WINDOW, whatever account they named;
    - per account, from a browser it never logged in from: a backoff (`account_wait`), not a lockout;
    - from a browser this account logged in from before (`device`, from the signed cookie set at login):
      LOGIN_MAX_FAILURES per window for that browser alone. A stranger's failures against the account
      never count here, so they cannot lock the owner out of their own browser.
    """
    address = email.strip().lower()[:320]
    user = session.scalar(select(User).where(User.email == address))
    trusted = device is not None and user is not None and device[0] == user.id
    if trusted:
        keys = [f"device:{device[1]}"[:400]]
        refused = throttled(session, keys, now)
    else:
        keys = [f"user:{address}", f"ip:{client}"]
        refused = throttled(session, keys[1:], now) or account_wait(session, address, now) > 0
    if refused:
        check_password(password, _DUMMY_HASH)  # the same time as a real check: refusals reveal nothing
        return None
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


SCOPES = ("read", "write")  # read: every GET of the API; write: also add, unsubscribe and erase subscribers


def normalise_scopes(scopes: str | Iterable[str]) -> str:
    """"read" or "read write" (write implies read); AccountError naming anything else."""
    given = set(scopes.replace(",", " ").split() if isinstance(scopes, str) else scopes)
    unknown = sorted(given - set(SCOPES))
    if unknown:
        raise AccountError(f"unknown token scope {unknown[0]!r}: use {' or '.join(SCOPES)}")
    return "read write" if "write" in given else "read"


def create_token(session: Session, name: str, *, now: datetime, scopes: str | Iterable[str] = ("read",)) -> str:
    """A new token, read-only unless `scopes` includes "write"; shown once, only its hash is kept."""
    name = " ".join(name.split())[:100]
    if not name:
        raise AccountError("a token needs a name")
    token = "drip_" + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, token_hash=token_hash(token), created_at=now, scopes=normalise_scopes(scopes)))
    session.flush()
    return token


def token_allows(row: ApiToken, scope: str) -> bool:
    return scope in (row.scopes or "read").split()


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
