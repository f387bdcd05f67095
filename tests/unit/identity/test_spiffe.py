import pytest

from insitu.errors import InsituError
from insitu.identity.spiffe import IdentityKind, SpiffeId


def test_roundtrip() -> None:
    sid = SpiffeId.parse("spiffe://demo.insitu/site/hospital-a")
    assert sid.kind is IdentityKind.SITE and sid.name == "hospital-a"
    assert sid.uri == "spiffe://demo.insitu/site/hospital-a"


@pytest.mark.parametrize(
    "uri",
    [
        "https://demo.insitu/site/a",
        "spiffe://demo.insitu/site",
        "spiffe://demo.insitu/robot/a",
        "spiffe://demo.insitu/site/A",
        "spiffe://demo.insitu/site/a/b",
        "spiffe://Demo/site/a",
        "spiffe://demo.insitu/site/-a",
        "spiffe://demo.insitu/site/" + "a" * 64,
    ],
)
def test_rejects_malformed(uri: str) -> None:
    with pytest.raises(InsituError):
        SpiffeId.parse(uri)
