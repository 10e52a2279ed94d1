"""The campaign_states rows, one per campaign (the operator's pause switch, and what the workers last
checked of its steps and templates): created when first needed, and locked in one order.

Several transactions lock several of these rows at once: a command's start records which templates
compiled, every pass checks for edited steps, an operator pauses a campaign. Each takes all its rows in
one call of `locked`, in campaign-key order, so two of them can only wait for each other in the same
direction and never deadlock. (Three `drip tick` processes started together once did: one locked the
rows in the order the database scanned them while another updated them in the order the campaigns were
loaded.)
"""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.core.models import CampaignState

_HELD = "drip.campaign_states_locked"  # session.info: (the transaction, the keys it has locked)


def locked(session: Session, keys: Iterable[str], *, now: datetime) -> dict[str, CampaignState]:
    """{campaign: its row}, each created if missing (another worker creating it at the same moment is no
    error) and locked FOR UPDATE until the caller's transaction ends, in key order.

    Call it once per transaction with every key needed. A second call in the same transaction may only
    add keys that sort after those already locked (otherwise the order, and with it the guarantee, would
    be lost): it raises RuntimeError instead of locking out of order."""
    ordered = sorted(set(keys))
    if not ordered:
        return {}
    held = session.info.get(_HELD)
    if held is not None and held[0] is session.get_transaction():
        new = [key for key in ordered if key not in held[1]]
        if new and new[0] < max(held[1]):
            raise RuntimeError(f"campaign_states: {new[0]!r} would be locked after {max(held[1])!r} in one "
                               "transaction; take every row in one call of states.locked")
        held[1].update(ordered)
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(insert(CampaignState).on_conflict_do_nothing(index_elements=["campaign"]),
                    [{"campaign": key, "paused": False, "updated_at": now} for key in ordered])
    if held is None or held[0] is not session.get_transaction():
        session.info[_HELD] = (session.get_transaction(), set(ordered))
    # With ORDER BY, PostgreSQL locks the rows in that order (the lock is taken above the sort).
    return {state.campaign: state for state in session.scalars(
        select(CampaignState).where(CampaignState.campaign.in_(ordered))
        .order_by(CampaignState.campaign).with_for_update()
        .execution_options(populate_existing=True))}  # the values as locked, not as this session last read them
