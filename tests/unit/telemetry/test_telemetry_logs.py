"""Redacted JSON logging: planted canaries never reach a formatted line, whichever way
they travel (message, %-arguments, extra fields, exception text, chained exceptions,
uncaught exceptions in threads)."""

from __future__ import annotations

import base64
import io
import json
import logging
import secrets
import sys
import threading
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from insitu.errors import InsituError
from insitu.telemetry import forget_secret, redact, register_secret, setup_logging

DATA_KEY = secrets.token_bytes(32)
ROOT_TOKEN = "root-" + secrets.token_hex(12)
PEM_KEY = (
    ec.generate_private_key(ec.SECP256R1())
    .private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    .decode()
)
PEM_BODY = PEM_KEY.splitlines()[2]

CANARIES = {
    "pan": "4111111111111111",
    "pan_spaced": "4111 1111 1111 1111",
    "pan_dashed": "5500-0000-0000-0004",
    "amex": "378282246310005",
    "ssn": "123-45-6789",
    "join_token": "isj_" + secrets.token_urlsafe(32),
    "vault_hvs": "hvs." + secrets.token_urlsafe(30),
    "vault_legacy": "s." + "Ab3dEf6hIj9kLm2nOp5qRs8t",
    "vault_batch": "b.AAAAAQ" + secrets.token_urlsafe(40),
    "email": "eve.patient@example.org",
    "bearer": "Bearer " + secrets.token_urlsafe(24),
    "password": "password=" + "hunter2hunter2",
    "root_token": ROOT_TOKEN,
    "data_key_hex": DATA_KEY.hex(),
    "data_key_HEX": DATA_KEY.hex().upper(),
    "data_key_b64": base64.b64encode(DATA_KEY).decode(),
    "data_key_b64url": base64.urlsafe_b64encode(DATA_KEY).decode().rstrip("="),
    "pem_body": PEM_BODY,
}
# What must never appear, per canary (for "bearer"/"password" the secret part only).
NEEDLES = dict(CANARIES)
NEEDLES["bearer"] = CANARIES["bearer"].split(" ", 1)[1]
NEEDLES["password"] = CANARIES["password"].split("=", 1)[1]
NEEDLES["pan_spaced_digits"] = "1111 1111 1111"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, sys.excepthook, threading.excepthook)
    register_secret(DATA_KEY)
    register_secret(ROOT_TOKEN)
    out = io.StringIO()
    try:
        yield out
    finally:
        for h in list(root.handlers):
            if h not in saved[0]:
                root.removeHandler(h)
        root.setLevel(saved[1])
        sys.excepthook, threading.excepthook = saved[2], saved[3]
        logging.captureWarnings(False)
        forget_secret(DATA_KEY)
        forget_secret(ROOT_TOKEN)


def _assert_clean(text: str) -> None:
    for name, needle in NEEDLES.items():
        assert needle not in text, f"canary {name} reached the log"


def _all_ways(log: logging.Logger) -> None:
    for name, value in CANARIES.items():
        log.info("literal %s " + value.replace("%", "%%"), name)
        log.warning("arg %s: %s", name, value)
        log.warning("dict arg %r", {"field": value, "nested": [value]})
        log.info("pem follows\n%s", PEM_KEY)
        log.info("extra field", extra={"detail": value, "n": 3})
    try:
        try:
            raise ValueError(f"card {CANARIES['pan']} key {DATA_KEY.hex()} {PEM_KEY}")
        except ValueError as e:
            raise InsituError_like(f"wrapped {CANARIES['ssn']} {ROOT_TOKEN}") from e
    except RuntimeError:
        log.exception("handling failed for %s", CANARIES["email"])
    log.error("stack", stack_info=True, extra={"tok": CANARIES["join_token"]})


class InsituError_like(RuntimeError):
    pass


@pytest.mark.parametrize("as_json", [True, False])
def test_canaries_never_reach_a_log_line(captured: io.StringIO, as_json: bool) -> None:
    setup_logging("INFO", json=as_json, stream=captured)
    _all_ways(logging.getLogger("insitu.test"))
    text = captured.getvalue()
    assert "[REDACTED:" in text and "handling failed" in text and "Traceback" in text
    _assert_clean(text)
    if as_json:
        lines = [json.loads(line) for line in text.splitlines()]
        assert {"ts", "level", "logger", "msg", "thread"} <= set(lines[0])
        exc_lines = [x for x in lines if "exc" in x]
        assert len(exc_lines) == 1 and "InsituError_like" in exc_lines[0]["exc"]
        assert any(x.get("detail") == "[REDACTED:pan]" and x.get("n") == 3 for x in lines)


def test_uncaught_exceptions_in_threads_are_redacted_too(captured: io.StringIO) -> None:
    setup_logging("INFO", stream=captured, capture_uncaught=True)

    def boom() -> None:
        raise RuntimeError(f"worker saw {CANARIES['vault_hvs']} and {DATA_KEY.hex()}")

    t = threading.Thread(target=boom, name="worker-1")
    t.start()
    t.join()
    text = captured.getvalue()
    assert "uncaught exception in thread worker-1" in text and "RuntimeError" in text
    _assert_clean(text)


@pytest.mark.parametrize(
    "text",
    [
        "site hospital-a enrolled, 3 sites connected",
        "policy hash 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "trace 4bf92f3577b34da6a3ce929d0e0e4736 span 00f067aa0ba902b7",
        "card-like but not Luhn 4111111111111112",
        "spiffe://demo.insitu/site/hospital-a serial 1f2e3d",
        "/tmp/pytest-of-root/pytest-12/test_Something0/site-a/tls/cert.pem",
        "round 3 took 1.25 s on 2026-11-22",
        "token_id=4f1c2a used",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_registered_secret_forms_and_short_secrets() -> None:
    value = secrets.token_bytes(24)
    assert redact(value.hex()) == value.hex()
    register_secret(value)
    try:
        for form in (
            value.hex(),
            base64.b64encode(value).decode(),
            base64.urlsafe_b64encode(value).decode().rstrip("="),
        ):
            assert redact(f"x {form} y") == "x [REDACTED:secret] y"
    finally:
        forget_secret(value)
    assert redact(value.hex()) == value.hex()
    with pytest.raises(InsituError):
        register_secret("short")


def test_a_pem_block_cut_short_is_still_masked() -> None:
    truncated = PEM_KEY[: len(PEM_KEY) // 2]
    assert PEM_BODY[:20] not in redact(f"loaded {truncated}")
