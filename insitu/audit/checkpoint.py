"""C2SP tlog-checkpoint signed notes: checkpoints, log signatures and witness cosignatures.

A checkpoint body is ``<origin>\\n<size>\\n<base64 root>\\n`` (plus optional extension
lines). A signed note is the body, a blank line, then signature lines
``— <key name> <base64(key id || signature)>``. The log signs with Ed25519 (key id
``SHA-256(name || 0x0A || 0x01 || pubkey)[:4]``); a witness adds a C2SP
``cosignature/v1`` line (key id with algorithm byte 0x04, an 8-byte big-endian timestamp,
and an Ed25519 signature over ``cosignature/v1\\ntime <t>\\n`` + body).

Signing takes a callable that returns a raw 64-byte Ed25519 signature, e.g.
``lambda m: key_service.sign("audit-signing", m)`` in production. Verification checks
the signature before any field of the body is trusted; ``_unverified_parse`` is the one
parser that does not, and says so.

Example::

    note = sign_checkpoint(Checkpoint("insitu/coordinator", 10, root), "insitu/coordinator",
                           signer, public_key)
    cp = verify_checkpoint(note, "insitu/coordinator", public_key)
    note = add_cosignature(note, "site-a", site_signer, site_public_key)
    verify_cosignature(note, "site-a", site_public_key)
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
import struct
import time as _time
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from insitu.audit.errors import CheckpointFormatError, SignatureError
from insitu.audit.merkle import HASH_SIZE

__all__ = [
    "Checkpoint",
    "Cosignature",
    "NoteSignature",
    "Signer",
    "add_cosignature",
    "key_id",
    "note_body",
    "parse_public_key",
    "sign_checkpoint",
    "sign_note",
    "verify_checkpoint",
    "verify_cosignature",
    "verify_note",
]

Signer = Callable[[bytes], bytes]
"""Returns the raw 64-byte Ed25519 signature of its argument."""

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04
_SIG_PREFIX = "\u2014 "
_MAX_NOTE = 64 * 1024
_NAME = re.compile(r"^[^\s+]+$")
_SIZE = re.compile(r"^(0|[1-9][0-9]{0,18})$")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A log's commitment to its first ``size`` entries (frozen value object)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise CheckpointFormatError("origin must be one non-empty line")
        if not 0 <= self.size < 2**63:
            raise CheckpointFormatError("size out of range")
        if len(self.root) != HASH_SIZE:
            raise CheckpointFormatError(f"root must be {HASH_SIZE} bytes")
        for e in self.extensions:
            if not e or "\n" in e:
                raise CheckpointFormatError("extension lines must be non-empty single lines")

    def body(self) -> bytes:
        lines = [
            self.origin,
            str(self.size),
            base64.b64encode(self.root).decode(),
            *self.extensions,
        ]
        return ("\n".join(lines) + "\n").encode()


@dataclasses.dataclass(frozen=True)
class NoteSignature:
    name: str
    key_id: bytes  # 4 bytes
    payload: bytes  # what follows the key id: the signature (and a timestamp for cosignatures)

    def line(self) -> str:
        return f"{_SIG_PREFIX}{self.name} {base64.b64encode(self.key_id + self.payload).decode()}"


@dataclasses.dataclass(frozen=True)
class Cosignature:
    name: str
    timestamp: int


def key_id(name: str, public_key: bytes, alg: int = ALG_ED25519) -> bytes:
    """C2SP signed-note key id: ``SHA-256(name || 0x0A || alg || pubkey)[:4]``."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public_key).digest()[:4]


def parse_public_key(data: bytes | str) -> bytes:
    """A raw 32-byte Ed25519 public key from base64 text (Vault ``read_key``) or PEM."""
    raw = data.encode() if isinstance(data, str) else data
    text = raw.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text)
        except ValueError:
            raise CheckpointFormatError("public key PEM is not readable") from None
        if not isinstance(key, Ed25519PublicKey):
            raise CheckpointFormatError("public key is not Ed25519")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        pub = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointFormatError("public key is not base64") from None
    if len(pub) != 32:
        raise CheckpointFormatError("public key must decode to 32 bytes (raw Ed25519)")
    return pub


def _check_name(name: str) -> None:
    if not name or not _NAME.fullmatch(name):
        raise CheckpointFormatError("key name must be non-empty, without spaces or '+'")


def _check_text(text: str) -> None:
    if len(text) > _MAX_NOTE:
        raise CheckpointFormatError("note is too large")
    if any((ord(c) < 0x20 and c != "\n") or ord(c) == 0x7F for c in text):
        raise CheckpointFormatError("note contains control characters")


def _unverified_split(text: str) -> tuple[bytes, list[NoteSignature]]:
    """Split a signed note into body and signature lines. Trusts nothing."""
    _check_text(text)
    if not text.endswith("\n"):
        raise CheckpointFormatError("note must end with a newline")
    i = text.rfind("\n\n")
    if i < 0:
        raise CheckpointFormatError("note has no signature block")
    body, sig_block = text[: i + 1], text[i + 2 :]
    sigs: list[NoteSignature] = []
    for line in sig_block[:-1].split("\n"):
        if not line.startswith(_SIG_PREFIX):
            raise CheckpointFormatError("malformed signature line")
        parts = line[len(_SIG_PREFIX) :].split(" ")
        if len(parts) != 2:
            raise CheckpointFormatError("malformed signature line")
        name, b64 = parts
        _check_name(name)
        try:
            blob = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise CheckpointFormatError("signature is not base64") from None
        if len(blob) < 5:
            raise CheckpointFormatError("signature too short")
        sigs.append(NoteSignature(name, blob[:4], blob[4:]))
    if not sigs:
        raise CheckpointFormatError("note has no signatures")
    return body.encode(), sigs


def note_body(text: str) -> bytes:
    """The signed body of a note (unverified; for building messages, not for trust)."""
    return _unverified_split(text)[0]


def _unverified_parse(text_or_body: str | bytes) -> Checkpoint:
    """Parse a checkpoint body (or a whole note) WITHOUT checking any signature."""
    if isinstance(text_or_body, str):
        body = (
            _unverified_split(text_or_body)[0] if "\n\n" in text_or_body else text_or_body.encode()
        )
    else:
        body = text_or_body
    try:
        s = body.decode()
    except UnicodeDecodeError:
        raise CheckpointFormatError("checkpoint is not UTF-8") from None
    if not s.endswith("\n"):
        raise CheckpointFormatError("checkpoint body must end with a newline")
    lines = s[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointFormatError("checkpoint needs origin, size and root lines")
    origin, size_s, root_s, *ext = lines
    if not _SIZE.fullmatch(size_s):
        raise CheckpointFormatError("checkpoint size is not a canonical decimal")
    try:
        root = base64.b64decode(root_s, validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointFormatError("checkpoint root is not base64") from None
    if base64.b64encode(root).decode() != root_s:
        raise CheckpointFormatError("checkpoint root is not canonical base64")
    return Checkpoint(origin, int(size_s), root, tuple(ext))


def _ed25519_verify(public_key: bytes, sig: bytes, msg: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(sig, msg)
    except (InvalidSignature, ValueError):
        return False
    return True


def sign_note(body: bytes, name: str, signer: Signer, public_key: bytes) -> str:
    """A signed note of ``body`` by Ed25519 key ``name``. The signature is checked against
    ``public_key`` first, so a signer/key mix-up fails here rather than at the auditor's."""
    _check_name(name)
    _check_text(body.decode())
    if not body.endswith(b"\n") or b"\n\n" in body:
        raise CheckpointFormatError("note body must be newline-terminated, without blank lines")
    sig = signer(body)
    if len(sig) != 64 or not _ed25519_verify(public_key, sig, body):
        raise SignatureError("signer did not produce a valid Ed25519 signature for the key")
    return body.decode() + "\n" + NoteSignature(name, key_id(name, public_key), sig).line() + "\n"


def verify_note(text: str, name: str, public_key: bytes) -> bytes:
    """The body of a signed note, once a signature by (``name``, ``public_key``) verifies.

    Signature lines by other keys are ignored (they may be witnesses). Raises
    SignatureError when no line by this key verifies, CheckpointFormatError when malformed.
    """
    _check_name(name)
    body, sigs = _unverified_split(text)
    kid = key_id(name, public_key)
    mine = [s for s in sigs if s.name == name and s.key_id == kid]
    if not mine:
        raise SignatureError(f"no signature by key '{name}' (key id {kid.hex()}) on the note")
    if not all(len(s.payload) == 64 and _ed25519_verify(public_key, s.payload, body) for s in mine):
        raise SignatureError(f"signature by key '{name}' does not verify")
    return body


def sign_checkpoint(cp: Checkpoint, name: str, signer: Signer, public_key: bytes) -> str:
    """The signed note of ``cp`` (see :func:`sign_note`)."""
    return sign_note(cp.body(), name, signer, public_key)


def verify_checkpoint(
    text: str, name: str, public_key: bytes, *, origin: str | None = None
) -> Checkpoint:
    """Verify the note's signature by (``name``, ``public_key``), then parse the body;
    with ``origin``, also require that origin line."""
    cp = _unverified_parse(verify_note(text, name, public_key))
    if origin is not None and cp.origin != origin:
        raise SignatureError(f"checkpoint origin is '{cp.origin}', expected '{origin}'")
    return cp


def _cosigned_message(body: bytes, timestamp: int) -> bytes:
    return b"cosignature/v1\ntime " + str(timestamp).encode() + b"\n" + body


def add_cosignature(
    text: str, name: str, signer: Signer, public_key: bytes, *, timestamp: int | None = None
) -> str:
    """Append a C2SP cosignature/v1 line by witness ``name``.

    The caller states, by cosigning, that it verified the log's signature and the
    consistency of this checkpoint with the last one it saw; this function only signs.
    """
    _check_name(name)
    body, _ = _unverified_split(text)
    ts = int(_time.time()) if timestamp is None else timestamp
    if not 0 <= ts < 2**63:
        raise CheckpointFormatError("cosignature timestamp out of range")
    msg = _cosigned_message(body, ts)
    sig = signer(msg)
    if len(sig) != 64 or not _ed25519_verify(public_key, sig, msg):
        raise SignatureError("cosigner did not produce a valid Ed25519 signature for the key")
    kid = key_id(name, public_key, ALG_COSIGNATURE_V1)
    return text + NoteSignature(name, kid, struct.pack(">Q", ts) + sig).line() + "\n"


def verify_cosignature(text: str, name: str, public_key: bytes) -> Cosignature:
    """Check the note carries a valid cosignature/v1 by (``name``, ``public_key``)."""
    _check_name(name)
    body, sigs = _unverified_split(text)
    kid = key_id(name, public_key, ALG_COSIGNATURE_V1)
    mine = [s for s in sigs if s.name == name and s.key_id == kid]
    if not mine:
        raise SignatureError(f"no cosignature by '{name}' (key id {kid.hex()}) on the note")
    for s in mine:
        if len(s.payload) != 72:
            raise SignatureError(f"cosignature by '{name}' is malformed")
        (ts,) = struct.unpack(">Q", s.payload[:8])
        if ts >= 2**63 or not _ed25519_verify(
            public_key, s.payload[8:], _cosigned_message(body, ts)
        ):
            raise SignatureError(f"cosignature by '{name}' does not verify")
    (ts,) = struct.unpack(">Q", mine[-1].payload[:8])
    return Cosignature(name, ts)
