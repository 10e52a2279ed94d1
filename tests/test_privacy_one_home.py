"""Export and erasure have one home: the reader's own download and the operator's export return the same
fields, and the reader's erasure deletes exactly what the operator's does, for that reader alone."""
from __future__ import annotations

import json

from conftest import at
from sqlalchemy import func, select
from test_admin_api import PASSWORD, login
from test_reader import SITE, data_path, enroll, prefs_path

from service.core.db import utcnow
from service.core.models import Consent, Enrollment, Event, Message, MessageContent, Subscriber
from service.operator.accounts import add_user

T0 = at("2026-05-04T10:00:00")


def shape(value):
    """The keys of a JSON document, recursively (lists by their first item)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return None


def rows_of(rt, sid: int) -> dict[str, int]:
    with rt.sessions() as s:
        counts = {m.__name__: s.scalar(select(func.count()).select_from(m).where(m.subscriber_id == sid))
                  for m in (Enrollment, Message, Consent, Event)}
        counts["MessageContent"] = s.scalar(select(func.count()).select_from(MessageContent).join(
            Message, Message.id == MessageContent.message_id).where(Message.subscriber_id == sid))
        counts["Subscriber"] = s.scalar(select(func.count()).select_from(Subscriber).where(Subscriber.id == sid))
    return counts


def test_reader_and_operator_export_the_same_fields_and_erase_the_same_rows(client, runtime, smtp) -> None:
    """Ada downloads her data; the operator exports the same reader from the console: same fields. Ada
    erases herself: no row of hers is left, stored copies of her emails included, and Bob keeps all his."""
    ada, bob = enroll(runtime, "ada@example.org"), enroll(runtime, "bob@example.org")
    assert runtime.dispatcher().run_pass(T0).sent == 2
    mine = json.loads(client.post(data_path(client, smtp, prefs_path(runtime, ada), "export", "ada@example.org"),
                                  headers=SITE).data)
    with runtime.sessions() as s, s.begin():
        add_user(s, "ops@example.org", PASSWORD, now=utcnow())
    login(client, "ops@example.org", PASSWORD)
    r = client.get(f"/admin/subscribers/{ada}/export.json")
    assert r.status_code == 200
    theirs = json.loads(r.data)
    assert shape(mine) == shape(theirs)
    assert mine["subscriber"]["email"] == theirs["subscriber"]["email"] == "ada@example.org"

    bob_before = rows_of(runtime, bob)
    assert rows_of(runtime, ada)["MessageContent"] == 1
    client.post(data_path(client, smtp, prefs_path(runtime, ada), "erase", "ada@example.org"),
                data={"confirm": "erase"}, headers=SITE)
    assert set(rows_of(runtime, ada).values()) == {0}
    assert rows_of(runtime, bob) == bob_before
