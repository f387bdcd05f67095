"""C2SP signed-note checkpoints and cosignatures."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from insitu.audit.checkpoint import (
    Checkpoint,
    _unverified_parse,
    add_cosignature,
    key_id,
    parse_public_key,
    sign_checkpoint,
    sign_note,
    verify_checkpoint,
    verify_cosignature,
    verify_note,
)
from insitu.audit.errors import CheckpointFormatError, SignatureError
from insitu.audit.signing import LocalSigner

# The reference vector of golang.org/x/mod/sumdb/note (note_test.go): key, text, signature.
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ORIGIN = "example.com/log"
ROOT = hashlib.sha256(b"root").digest()


def _go_keys() -> tuple[Ed25519PrivateKey, bytes]:
    pub = base64.b64decode(GO_VKEY.split("+", 2)[2])[1:]
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])[1:]
    return Ed25519PrivateKey.from_private_bytes(seed), pub


def test_go_reference_note_byte_for_byte() -> None:
    priv, pub = _go_keys()
    assert key_id("PeterNeumann", pub).hex() == "c74f20a3"
    assert sign_note(GO_TEXT.encode(), "PeterNeumann", priv.sign, pub) == GO_NOTE
    assert verify_note(GO_NOTE, "PeterNeumann", pub) == GO_TEXT.encode()
    with pytest.raises(SignatureError):
        verify_note(GO_NOTE.replace("cryptography", "cryptographY"), "PeterNeumann", pub)


def test_sign_verify_round_trip() -> None:
    s = LocalSigner.generate()
    cp = Checkpoint(ORIGIN, 12345, ROOT)
    note = sign_checkpoint(cp, ORIGIN, s.sign, s.public_key)
    assert note.startswith(
        f"{ORIGIN}\n12345\n{base64.b64encode(ROOT).decode()}\n\n\u2014 {ORIGIN} "
    )
    assert verify_checkpoint(note, ORIGIN, s.public_key, origin=ORIGIN) == cp


def test_signature_by_another_key_is_rejected() -> None:
    s, other = LocalSigner.generate(), LocalSigner.generate()
    note = sign_checkpoint(Checkpoint(ORIGIN, 1, ROOT), ORIGIN, other.sign, other.public_key)
    with pytest.raises(SignatureError, match="no signature"):
        verify_checkpoint(note, ORIGIN, s.public_key)
    # Same name and key id, but a signature from another key: a forgery attempt.
    forged = note.replace(
        note.split(" ")[-1].strip(),
        base64.b64encode(key_id(ORIGIN, s.public_key) + other.sign(b"x")).decode(),
    )
    with pytest.raises(SignatureError, match="does not verify"):
        verify_checkpoint(forged, ORIGIN, s.public_key)


def test_tampered_body_is_rejected() -> None:
    s = LocalSigner.generate()
    note = sign_checkpoint(Checkpoint(ORIGIN, 10, ROOT), ORIGIN, s.sign, s.public_key)
    with pytest.raises(SignatureError):
        verify_checkpoint(note.replace("\n10\n", "\n11\n"), ORIGIN, s.public_key)
    with pytest.raises(SignatureError, match="origin"):
        verify_checkpoint(note, ORIGIN, s.public_key, origin="other/log")


def test_signer_key_mismatch_fails_at_signing() -> None:
    s, other = LocalSigner.generate(), LocalSigner.generate()
    with pytest.raises(SignatureError):
        sign_checkpoint(Checkpoint(ORIGIN, 1, ROOT), ORIGIN, s.sign, other.public_key)


@pytest.mark.parametrize(
    "body",
    [
        "o\n01\n" + base64.b64encode(ROOT).decode() + "\n",  # leading zero
        "o\n-1\n" + base64.b64encode(ROOT).decode() + "\n",
        "o\n1\n" + base64.b64encode(ROOT[:31]).decode() + "\n",  # short root
        "o\n1\nnot base64!\n",
        "o\n1\n",
        "o\n1\n" + base64.b64encode(ROOT).decode(),  # no final newline
        "\n1\n" + base64.b64encode(ROOT).decode() + "\n",  # empty origin
    ],
)
def test_malformed_bodies(body: str) -> None:
    with pytest.raises(CheckpointFormatError):
        _unverified_parse(body)


@pytest.mark.parametrize(
    "note",
    [
        "o\n1\nAA==\n",  # no signature block
        "o\n1\nAA==\n\n",  # empty signature block
        "o\n1\nAA==\n\n- name AAAAAAAA\n",  # ASCII dash instead of em dash
        "o\n1\nAA==\n\n\u2014 name !!!\n",
        "o\n1\nAA==\n\n\u2014 na me AAAAAAAA\n",
        "o\n1\x07\nAA==\n\n\u2014 name AAAAAAAA\n",  # control character
    ],
)
def test_malformed_notes(note: str) -> None:
    with pytest.raises(CheckpointFormatError):
        verify_checkpoint(note, "name", b"\x00" * 32)


def test_cosignature_round_trip_and_independence() -> None:
    log, w1, w2 = LocalSigner.generate(), LocalSigner.generate(), LocalSigner.generate()
    note = sign_checkpoint(Checkpoint(ORIGIN, 5, ROOT), ORIGIN, log.sign, log.public_key)
    cosigned = add_cosignature(note, "site-a", w1.sign, w1.public_key, timestamp=1_700_000_000)
    cosigned = add_cosignature(cosigned, "site-b", w2.sign, w2.public_key, timestamp=1_700_000_001)
    assert verify_cosignature(cosigned, "site-a", w1.public_key).timestamp == 1_700_000_000
    assert verify_cosignature(cosigned, "site-b", w2.public_key).timestamp == 1_700_000_001
    # The log signature still verifies with cosignature lines present.
    assert verify_checkpoint(cosigned, ORIGIN, log.public_key).size == 5
    with pytest.raises(SignatureError):
        verify_cosignature(cosigned, "site-a", w2.public_key)
    with pytest.raises(SignatureError):
        verify_cosignature(note, "site-a", w1.public_key)
    # A cosignature key id uses algorithm byte 0x04, so it is not a log signature.
    with pytest.raises(SignatureError):
        verify_checkpoint(cosigned, "site-a", w1.public_key)


def test_cosignature_over_another_body_fails() -> None:
    log, w = LocalSigner.generate(), LocalSigner.generate()
    a = sign_checkpoint(Checkpoint(ORIGIN, 5, ROOT), ORIGIN, log.sign, log.public_key)
    b = sign_checkpoint(Checkpoint(ORIGIN, 6, ROOT), ORIGIN, log.sign, log.public_key)
    cos_line = add_cosignature(a, "site-a", w.sign, w.public_key).splitlines()[-1]
    with pytest.raises(SignatureError):
        verify_cosignature(b + cos_line + "\n", "site-a", w.public_key)


def test_cosigned_message_matches_c2sp() -> None:
    # Verify the line independently: key id byte 0x04, big-endian timestamp, message shape.
    log, w = LocalSigner.generate(), LocalSigner.generate()
    note = sign_checkpoint(Checkpoint(ORIGIN, 5, ROOT), ORIGIN, log.sign, log.public_key)
    blob = base64.b64decode(
        add_cosignature(note, "w", w.sign, w.public_key, timestamp=42).split()[-1]
    )
    want_id = hashlib.sha256(b"w\n\x04" + w.public_key).digest()[:4]
    assert blob[:4] == want_id and int.from_bytes(blob[4:12], "big") == 42
    body = note.split("\n\n")[0] + "\n"
    msg = b"cosignature/v1\ntime 42\n" + body.encode()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    Ed25519PublicKey.from_public_bytes(w.public_key).verify(blob[12:], msg)


def test_parse_public_key_formats() -> None:
    s = LocalSigner.generate()
    assert parse_public_key(s.public_key_b64()) == s.public_key
    assert parse_public_key(s.public_key_b64() + "\n") == s.public_key
    pem = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert len(parse_public_key(pem)) == 32
    for bad in ("AAAA", "not base64", ""):
        with pytest.raises(CheckpointFormatError):
            parse_public_key(bad)
