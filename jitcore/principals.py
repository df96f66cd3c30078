"""Stored identities: admin mappings (Slack user -> Entra ID user) and the resolution cache."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.exc import IntegrityError

from jitcore.db import Store
from jitcore.model import Principal, PrincipalMapping


class PrincipalStore:
    """Short transactions over the ``principal`` and ``principal_mapping`` tables."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def cached(self, slack_user_id: str) -> Principal | None:
        with self.store.session() as session:
            return session.get(Principal, slack_user_id)

    def remember(self, principal: Principal) -> None:
        """Insert or replace the cached resolution of one Slack user."""
        self._upsert(Principal, principal.slack_user_id, principal)

    def forget(self, slack_user_id: str) -> None:
        with self.store.session() as session:
            row = session.get(Principal, slack_user_id)
            if row is not None:
                session.delete(row)
                session.commit()

    def mapping(self, slack_user_id: str) -> PrincipalMapping | None:
        with self.store.session() as session:
            return session.get(PrincipalMapping, slack_user_id)

    def set_mapping(self, slack_user_id: str, target: str, set_by: str, at: datetime) -> None:
        row = PrincipalMapping(slack_user_id=slack_user_id, target=target, set_by=set_by, set_at=at)
        self._upsert(PrincipalMapping, slack_user_id, row)

    def remove_mapping(self, slack_user_id: str) -> bool:
        with self.store.session() as session:
            row = session.get(PrincipalMapping, slack_user_id)
            if row is None:
                return False
            session.delete(row)
            session.commit()
            return True

    def _upsert(
        self, table: type[Principal] | type[PrincipalMapping], key: str, row: object
    ) -> None:
        """Write ``row`` over any row with the same key. Two writers racing on a new key:
        the loser's INSERT fails on the primary key, and it updates instead."""
        for attempt in range(2):
            with self.store.session() as session:
                existing = session.get(table, key)
                if existing is None:
                    session.add(row)
                else:
                    for name in table.model_fields:
                        setattr(existing, name, getattr(row, name))
                    session.add(existing)
                try:
                    session.commit()
                    return
                except IntegrityError:
                    session.rollback()
                    if attempt:
                        raise
