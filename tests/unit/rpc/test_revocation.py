import pytest

from insitu.errors import ErrorCode, InsituError
from insitu.rpc.revocation import RevocationList


def test_fails_closed_when_stale() -> None:
    now = [0.0]
    rl = RevocationList(lambda: frozenset({7}), refresh_s=1, max_stale_s=10, clock=lambda: now[0])
    with pytest.raises(InsituError):
        rl.is_revoked(1)  # never fetched
    rl.refresh()
    assert rl.is_revoked(7) and not rl.is_revoked(8)
    now[0] = 11.0
    with pytest.raises(InsituError) as e:
        rl.is_revoked(8)
    assert e.value.code is ErrorCode.UNAVAILABLE


def test_local_revocation_is_immediate_and_notifies() -> None:
    seen: list[int] = []
    rl = RevocationList(lambda: frozenset(), refresh_s=1, max_stale_s=10)
    rl.refresh()
    rl.on_revoke(seen.append)
    rl.add(42)
    assert rl.is_revoked(42) and seen == [42]
