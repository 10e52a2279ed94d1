"""The Flask app factory. Configuration is passed in; nothing is built at import time.

`create_app()` never starts a scheduler: under gunicorn every worker would send every email. The
scheduler lives in `drip serve` (one process) and `drip worker`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Flask, g, request
from flask.sessions import SecureCookieSessionInterface
from sqlalchemy.orm import Session

from service.core import inputs
from service.core.config import Settings
from service.runtime import Runtime, build_runtime

log = logging.getLogger(__name__)
_SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "strict-origin-when-cross-origin"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
)
_NO_STORE = (("Cache-Control", "no-store"),)


class _CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, except that a request without the session cookie (every signup,
    every reader page) gets an empty session without building the signing serializer first."""

    def open_session(self, app: Flask, request):
        # No Cookie header at all (a signup form post, an API client): nothing to parse either.
        if app.secret_key and ("HTTP_COOKIE" not in request.environ
                               or self.get_cookie_name(app) not in request.cookies):
            return self.session_class()
        return super().open_session(app, request)


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None,
               wake: Callable[[], None] | None = None) -> Flask:
    settings = settings or (runtime.settings if runtime else Settings.from_env())
    runtime = runtime or build_runtime(settings)
    app = Flask(__name__, template_folder="web/templates", static_folder="web/static")
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        MAX_FORM_MEMORY_SIZE=settings.max_body_bytes,
        MAX_FORM_PARTS=inputs.MAX_FORM_PARTS,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.base_url.startswith("https://"),
        SESSION_COOKIE_NAME="drip_session",
        PERMANENT_SESSION_LIFETIME=12 * 3600,
    )
    app.session_interface = _CookieSessions()
    if settings.trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        # Behind N proxies the client is the Nth address from the right of X-Forwarded-For; without
        # this every reader would share the proxy's address (one rate-limit bucket, wrong consent IP).
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)
    app.extensions["drip"] = runtime
    app.extensions["drip.wake"] = wake or (lambda: None)

    @app.before_request
    def _published_campaigns() -> None:
        # A campaign version published in the console or by another process shows here within a second.
        runtime.campaigns.refresh(at_most_every=1.0)

    @app.teardown_appcontext
    def _close_session(_exc: BaseException | None) -> None:
        session: Session | None = g.pop("db", None)
        if session is not None:
            session.close()

    @app.after_request
    def _security_headers(response):
        h = response.headers
        # One pass over the few headers present instead of a setdefault each (every request pays
        # this; an absent key costs Headers a KeyError per lookup).
        present = {key.lower() for key in h.keys()}
        wanted = _SECURITY_HEADERS + (_NO_STORE if request.path.startswith(("/admin", "/api")) else ())
        h.extend([(key, value) for key, value in wanted if key.lower() not in present])
        return response

    from service.web import (  # noqa: F401 (console routes)
        admin,
        admin_accounts,
        admin_campaigns,
        admin_home,
        admin_outbox,
        admin_subscribers,
        api,
        console,
        public,
        reader,
        tracking,
        webhooks,
    )

    app.register_blueprint(public.bp)
    app.register_blueprint(console.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(webhooks.bp)  # provider event webhooks
    app.register_blueprint(tracking.bp)  # open pixel and click redirect
    app.register_blueprint(reader.bp)  # preference page, view in browser
    from service.web import campaign_editor, campaign_preview, confirm  # double opt-in; campaign pages, editor

    app.register_blueprint(confirm.bp)
    app.register_blueprint(campaign_preview.bp)
    app.register_blueprint(campaign_editor.bp)
    return app
