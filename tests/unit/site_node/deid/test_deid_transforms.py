"""Each de-identification transform, on hand-picked values."""

from __future__ import annotations

import datetime as dt
import hmac

import numpy as np
import pyarrow as pa
import pytest

from insitu.errors import ErrorCode, InsituError
from site_node.deid import transforms as T

KEY = bytes(range(32))
LOW_POP = [
    "036",
    "059",
    "063",
    "102",
    "203",
    "556",
    "692",
    "790",
    "821",
    "823",
    "830",
    "831",
    "878",
    "879",
    "884",
    "890",
    "893",
]


# ---------------------------------------------------------------------------- ZIP3


def test_zip3_keeps_first_three_digits() -> None:
    out = T.zip3(pa.array(["02139", "90210-1234", " 10001 "]))
    assert out.values.to_pylist() == ["021", "902", "100"]
    assert out.invalid == 0


def test_low_population_list_is_the_hhs_list() -> None:
    assert sorted(T.LOW_POPULATION_ZIP3) == LOW_POP


@pytest.mark.parametrize("zip3", LOW_POP)
def test_every_low_population_zip3_becomes_000(zip3: str) -> None:
    assert T.zip3(pa.array([f"{zip3}42"])).values.to_pylist() == ["000"]


def test_neighbours_of_low_population_zip3s_are_kept() -> None:
    assert T.zip3(pa.array(["03542", "03742", "89442"])).values.to_pylist() == ["035", "037", "894"]


def test_integer_zips_get_their_leading_zero_back() -> None:
    assert T.zip3(pa.array([2139, 3601, 90210])).values.to_pylist() == ["021", "000", "902"]


def test_malformed_zips_are_nulled_and_counted() -> None:
    out = T.zip3(pa.array(["1234", "ABCDE", "021399", None, "02139"]))
    assert out.values.to_pylist() == [None, None, None, None, "021"]
    assert out.invalid == 3


# ---------------------------------------------------------------------------- ages


def test_age_bands_and_90_plus() -> None:
    ages = pa.array([0, 4, 5, 9, 17.9, 85, 89, 89.99, 90, 104, 150])
    assert T.age_band(ages).values.to_pylist() == [
        "0-4",
        "0-4",
        "5-9",
        "5-9",
        "15-19",
        "85-89",
        "85-89",
        "85-89",
        "90+",
        "90+",
        "90+",
    ]


def test_no_band_above_85_89_except_90_plus() -> None:
    labels = set(T.age_band(pa.array(np.arange(0, 151))).values.to_pylist())
    assert "90+" in labels
    assert not any(label.startswith(("90-", "95-", "100-")) for label in labels)


def test_invalid_ages_are_nulled() -> None:
    out = T.age_band(pa.array(["33", "-1", "abc", "200", None, " 91 "]))
    assert out.values.to_pylist() == ["30-34", None, None, None, None, "90+"]
    assert out.invalid == 3


# ---------------------------------------------------------------------------- dates


def test_iso_dates_and_timestamps_become_years() -> None:
    values = pa.array(["1975-03-04", "2020-12-31T23:59:59", "2001-02-03 10:00", None])
    assert T.date_to_year(values, reference_year=2026).values.to_pylist() == [
        1975,
        2020,
        2001,
        None,
    ]


def test_arrow_date_and_timestamp_types() -> None:
    dates = pa.array([dt.date(1999, 1, 2)])
    stamps = pa.array([dt.datetime(2011, 5, 6, 7, 8)], pa.timestamp("s"))
    assert T.date_to_year(dates, reference_year=2026).values.to_pylist() == [1999]
    assert T.date_to_year(stamps, reference_year=2026).values.to_pylist() == [2011]


def test_malformed_dates_are_nulled_not_raised() -> None:
    out = T.date_to_year(
        pa.array(["03/04/1975", "2020-13-01", "2020-01-40", "x"]), reference_year=2026
    )
    assert out.values.to_pylist() == [None, None, None, None]
    assert out.invalid == 4


def test_birth_years_revealing_age_over_89_collapse() -> None:
    out = T.date_to_year(
        pa.array(["1900-01-01", "1936-06-01", "1937-01-01", None]), birth=True, reference_year=2026
    )
    assert out.values.to_pylist() == [1936, 1936, 1937, None]


# ----------------------------------------------------------------------------- PANs

VISA = "4111111111111111"
AMEX = "378282246310005"
MC = "5555555555554444"


def test_valid_pans_keep_at_most_first6_last4() -> None:
    out = T.truncate_pan(pa.array([VISA, AMEX, MC, "4111 1111 1111 1111", "4111-1111-1111-1111"]))
    assert out.values.to_pylist() == [
        "411111******1111",
        "37828******0005",
        "555555******4444",
        "411111******1111",
        "411111******1111",
    ]


def test_fewer_digits_on_request() -> None:
    out = T.truncate_pan(pa.array([VISA]), keep_first=0, keep_last=4)
    assert out.values.to_pylist() == ["************1111"]


def test_short_pans_always_mask_six_digits() -> None:
    body = "41111111111"
    from site_node.data.synthetic import luhn_check_digit

    pan12 = body + luhn_check_digit(body)
    (masked,) = T.truncate_pan(pa.array([pan12])).values.to_pylist()
    assert masked is not None and masked.count("*") >= 6 and masked.endswith(pan12[-4:])


def test_luhn_failures_and_junk_are_suppressed_never_passed_through() -> None:
    bad = [
        "4111111111111112",
        "12345",
        "4111x11111111111",
        "0000000000000000",
        "41111111111111111111",
        "",
    ]
    out = T.truncate_pan(pa.array([*bad, None]))
    assert out.values.to_pylist() == [None] * 7
    assert out.invalid == len(bad)


def test_luhn_valid_flags() -> None:
    assert T.luhn_valid(pa.array([VISA, "4111111111111112", AMEX])).tolist() == [True, False, True]


def test_pan_truncation_rejects_wider_keep() -> None:
    with pytest.raises(InsituError) as err:
        T.truncate_pan(pa.array([VISA]), keep_first=8)
    assert err.value.code is ErrorCode.POLICY_INVALID


# ---------------------------------------------------------------------------- noise


def test_laplace_scale_matches_sensitivity_over_epsilon() -> None:
    n = 200_000
    out = T.laplace_noise(
        pa.array(np.full(n, 5.0)), epsilon=0.5, clip=(0.0, 10.0), rng=np.random.default_rng(1234)
    )
    noisy = out.values.to_numpy()
    b = 10.0 / 0.5
    assert abs(noisy.mean() - 5.0) < 0.5
    # Laplace(b): mean absolute deviation is b, standard deviation b*sqrt(2).
    assert abs(np.abs(noisy - 5.0).mean() - b) / b < 0.02
    assert abs(noisy.std() - b * np.sqrt(2)) / (b * np.sqrt(2)) < 0.03


def test_noise_clips_before_adding_and_keeps_nulls() -> None:
    n = 100_000
    values = pa.array([1e9] * n + [None])
    out = T.laplace_noise(values, epsilon=1.0, clip=(0.0, 10.0), rng=np.random.default_rng(7))
    noisy = out.values.to_pylist()
    assert noisy[-1] is None
    assert abs(np.mean(noisy[:-1]) - 10.0) < 0.5


def test_noise_is_reproducible_with_a_seed() -> None:
    a = T.laplace_noise(pa.array([1.0, 2.0]), epsilon=1, clip=(0, 5), rng=np.random.default_rng(3))
    b = T.laplace_noise(pa.array([1.0, 2.0]), epsilon=1, clip=(0, 5), rng=np.random.default_rng(3))
    assert a.values.equals(b.values)


# ------------------------------------------------------------------------ pseudonyms


def test_pseudonym_is_keyed_hmac_sha256_with_domain() -> None:
    out = T.pseudonymize(pa.array(["123-45-6789", None, "123-45-6789"]), key=KEY, domain="ssn")
    expected = hmac.new(KEY, b"ssn\x00123-45-6789", "sha256").hexdigest()
    assert out.values.to_pylist() == [expected, None, expected]


def test_pseudonym_domains_and_keys_separate() -> None:
    value = pa.array(["A1"])
    a = T.pseudonymize(value, key=KEY, domain="ssn").values.to_pylist()
    b = T.pseudonymize(value, key=KEY, domain="mrn").values.to_pylist()
    c = T.pseudonymize(value, key=bytes(32), domain="ssn").values.to_pylist()
    assert len({a[0], b[0], c[0]}) == 3


def test_integer_identifiers_pseudonymize_as_text() -> None:
    ints = T.pseudonymize(pa.array([42]), key=KEY, domain="d").values.to_pylist()
    text = T.pseudonymize(pa.array(["42"]), key=KEY, domain="d").values.to_pylist()
    assert ints == text


@pytest.mark.parametrize("key", [b"short", bytes(33), "x" * 32])
def test_pseudonym_key_must_be_32_bytes(key: object) -> None:
    with pytest.raises(InsituError) as err:
        T.pseudonymize(pa.array(["a"]), key=key, domain="d")  # type: ignore[arg-type]
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    assert "x" * 8 not in str(err.value)


def test_each_distinct_value_is_hashed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = T._hmac_many

    def counting(key: bytes, domain: str, messages: list[bytes]) -> bytes:
        seen.append(len(messages))
        return real(key, domain, messages)

    monkeypatch.setattr(T, "_hmac_many", counting)
    values = pa.array([f"v{i % 37}" for i in range(100_000)])
    out = T.pseudonymize(values, key=KEY, domain="d")
    assert seen == [37]
    assert len(set(out.values.to_pylist())) == 37


def test_key_id_is_stable_and_key_dependent() -> None:
    assert T.pseudonym_key_id(KEY) == T.pseudonym_key_id(bytes(KEY))
    assert T.pseudonym_key_id(KEY) != T.pseudonym_key_id(bytes(32))
    assert KEY.hex()[:16] not in T.pseudonym_key_id(KEY)


def test_mostly_distinct_columns_hash_directly_with_the_same_result() -> None:
    values = [f"id-{i}" if i % 7 else None for i in range(100_000)]
    assert T._mostly_distinct(pa.array(values))
    direct = T.pseudonymize(pa.array(values), key=KEY, domain="d").values.to_pylist()
    small = T.pseudonymize(pa.array(values[:1000]), key=KEY, domain="d").values.to_pylist()
    assert not T._mostly_distinct(pa.array(values[:1000]))
    assert direct[:1000] == small
    assert direct[0] is None and direct[1] == hmac.new(KEY, b"d\x00id-1", "sha256").hexdigest()
