from insitu.errors import CATALOG, ErrorCode, InsituError


def test_every_error_code_is_in_the_catalog() -> None:
    assert set(ErrorCode) == set(CATALOG)


def test_private_detail_is_not_public() -> None:
    e = InsituError(ErrorCode.TOKEN_USED, "token abc123 used")
    assert "abc123" not in e.public_message()
    e2 = InsituError(ErrorCode.INVALID_ARGUMENT, "site_id is bad")
    assert e2.public_message() == "invalid argument: site_id is bad"
