"""`drip bounces --maildir PATH`: read a bounce mailbox, turn DSNs into delivery events (issue 4)."""
from __future__ import annotations

from pathlib import Path

import click


def register(main: click.Group) -> None:
    @main.command("bounces")
    @click.option("--maildir", "maildir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                  required=True, help="Maildir folder the bounces+…@DRIP_BOUNCE_DOMAIN mail is delivered to")
    def bounces(maildir: Path) -> None:
        """Parse every unseen message as an RFC 3464 DSN, apply it, and flag it seen.

        Messages that are not DSNs (out-of-office replies, humans) are flagged seen and never counted."""
        from .. import bounces as dsn
        from ..cli import _runtime, _settings
        from ..db import utcnow
        from ..delivery import apply

        rt = _runtime(_settings())
        policy = rt.delivery_policy()
        counts = {"messages": 0, "not_dsn": 0, "applied": 0, "duplicate": 0, "unknown": 0}
        for key, raw, box in dsn.maildir_messages(maildir):
            counts["messages"] += 1
            found = dsn.parse_dsn(raw, secret=rt.settings.secret_key)
            counts["not_dsn"] += not found
            with rt.sessions() as session, session.begin():
                for ev in found:
                    counts[apply(session, ev, now=utcnow(), policy=policy)] += 1
            dsn.mark_seen(box, key)
        click.echo("bounces: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
