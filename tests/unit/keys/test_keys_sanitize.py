"""Error details built from Vault replies must never carry secrets."""

from __future__ import annotations

import base64

from insitu.keys._vault import sanitize


def test_pem_blocks_are_removed() -> None:
    text = (
        "bad csr -----BEGIN CERTIFICATE REQUEST-----\nMIIBabc\n"
        "-----END CERTIFICATE REQUEST----- end"
    )
    out = sanitize(text)
    assert "MIIB" not in out and "<pem>" in out and out.endswith("end")


def test_unterminated_pem_is_removed() -> None:
    assert "MIIB" not in sanitize("x -----BEGIN EC PRIVATE KEY-----\nMIIBsecret")


def test_tokens_and_key_material_are_removed() -> None:
    b64 = base64.b64encode(bytes(range(32))).decode()
    hexkey = bytes(range(100, 132)).hex()
    out = sanitize(f"token hvs.CAESIabcdefghijk and s.AbCdEf123456789 key {b64} hex {hexkey}")
    assert "CAESI" not in out and "AbCdEf" not in out
    assert b64 not in out and hexkey not in out


def test_identifiers_stay_readable() -> None:
    text = (
        "URI SANs spiffe://test.insitu/service/coordinator-with-a-rather-long-name not allowed;"
        " serial 29:07:cf:89:16:e6:6a:3e:29:38:91:2c:5b:d6:0c:ab:79:eb:d7:d2 not found"
    )
    assert sanitize(text) == text


def test_length_is_capped() -> None:
    assert len(sanitize("word " * 500)) <= 300
