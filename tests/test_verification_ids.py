"""Verification ids: UUIDs of version 7, so the stores' tables get them in time order."""

from __future__ import annotations

import uuid

from engine.models import new_verification_id

NOW = 1_700_000_000.0


def test_an_id_is_a_canonical_uuid_of_version_7() -> None:
    verification_id = new_verification_id()

    parsed = uuid.UUID(verification_id)
    assert str(parsed) == verification_id  # 36 characters, lower-case, the usual dashes
    assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)


def test_ids_made_in_the_same_millisecond_are_distinct() -> None:
    ids = {new_verification_id(NOW) for _ in range(10_000)}

    assert len(ids) == 10_000


def test_ids_sort_in_the_order_they_were_made() -> None:
    offsets = (0, 1, 2, 999, 1_000, 86_400_000)  # milliseconds after NOW

    ids = [new_verification_id(NOW + offset / 1000) for offset in offsets]

    assert sorted(ids) == ids
    # The first 48 bits are the time in milliseconds.
    assert [uuid.UUID(made).int >> 80 for made in ids] == [int(NOW * 1000) + offset for offset in offsets]
