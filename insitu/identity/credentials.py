"""Local key material: EC P-256 keys generated where they are used, CSRs, and the
on-disk credential set (key 0600, certificate, chain, trust anchor).

The private key never leaves this module's files: callers send only the CSR.

Example::

    key = generate_private_key()
    csr_pem = build_csr(key, SpiffeId.site("demo.insitu", "hospital-a"))
    creds = Credentials(key_pem=key_to_pem(key), cert_pem=..., chain_pem=..., ca_pem=...)
    creds.save(site_dir / "tls")
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from insitu.errors import ErrorCode, InsituError
from insitu.identity.spiffe import SpiffeId

__all__ = [
    "CertInfo",
    "Credentials",
    "build_csr",
    "cert_info",
    "generate_private_key",
    "key_to_pem",
    "write_private_file",
]

KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"
CHAIN_FILE = "chain.pem"
CA_FILE = "ca.pem"


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def build_csr(key: ec.EllipticCurvePrivateKey, spiffe_id: SpiffeId) -> str:
    """A PEM CSR carrying ``spiffe_id`` as URI SAN (the signer decides the final SANs)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spiffe_id.name)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id.uri)]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class CertInfo:
    """What insitu reads off a certificate."""

    spiffe_id: SpiffeId | None
    serial: int
    not_before: datetime
    not_after: datetime
    fingerprint: str  # SHA-256 over DER, lowercase hex

    def lifetime_fraction_elapsed(self, now: datetime) -> float:
        total = (self.not_after - self.not_before).total_seconds()
        if total <= 0:
            return 1.0
        return (now - self.not_before).total_seconds() / total


def cert_info(cert_pem: str | bytes) -> CertInfo:
    """Parse the first certificate of ``cert_pem``; INVALID_ARGUMENT if it is not one."""
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "not a PEM X.509 certificate") from None
    return cert_info_from(cert)


def cert_info_from(cert: x509.Certificate) -> CertInfo:
    spiffe: SpiffeId | None = None
    with contextlib.suppress(x509.ExtensionNotFound):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = [
            u
            for u in san.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith("spiffe://")
        ]
        # SPIFFE: exactly one SPIFFE URI SAN, otherwise the identity is ambiguous.
        if len(uris) == 1:
            with contextlib.suppress(InsituError):
                spiffe = SpiffeId.parse(uris[0])
    der = cert.public_bytes(serialization.Encoding.DER)
    return CertInfo(
        spiffe_id=spiffe,
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint=hashlib.sha256(der).hexdigest(),
    )


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path`` with mode 0600 from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class Credentials:
    """A private key (PEM) with its certificate, issuing chain and trust anchor."""

    key_pem: bytes
    cert_pem: str
    chain_pem: str
    ca_pem: str

    def __repr__(self) -> str:  # never show the key
        return f"Credentials(cert_serial={self.info.serial:x})"

    @property
    def info(self) -> CertInfo:
        return cert_info(self.cert_pem)

    @property
    def cert_chain_pem(self) -> bytes:
        """Leaf plus intermediates, as a TLS peer presents them."""
        chain = self.cert_pem.rstrip("\n") + "\n" + self.chain_pem.strip("\n") + "\n"
        return chain.encode()

    def save(self, directory: Path) -> None:
        """Write all four files (mode 0600) and switch ``directory`` to them atomically.

        ``directory`` is a symlink to a folder named after the certificate serial, so a
        crash mid-renewal leaves either the old or the new key+certificate pair, never a
        key that does not match its certificate.
        """
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = directory.parent / f"{directory.name}-{self.info.serial:x}"
        write_private_file(target / KEY_FILE, self.key_pem)
        write_private_file(target / CHAIN_FILE, self.chain_pem.encode())
        write_private_file(target / CA_FILE, self.ca_pem.encode())
        write_private_file(target / CERT_FILE, self.cert_pem.encode())
        old = directory.resolve() if directory.is_symlink() else None
        tmp_link = directory.parent / f".{directory.name}.link"
        with contextlib.suppress(FileNotFoundError):
            tmp_link.unlink()
        os.symlink(target.name, tmp_link)
        os.replace(tmp_link, directory)
        _fsync_dir(directory.parent)
        if old is not None and old != target.resolve() and old.is_dir():
            for f in old.iterdir():
                f.unlink()
            old.rmdir()

    @classmethod
    def load(cls, directory: Path) -> Credentials:
        try:
            key_path = directory / KEY_FILE
            mode = key_path.stat().st_mode & 0o777
            if mode & 0o077:
                raise InsituError(
                    ErrorCode.CONFIG, f"{key_path} must not be readable by others (mode {mode:o})"
                )
            return cls(
                key_pem=key_path.read_bytes(),
                cert_pem=(directory / CERT_FILE).read_text(),
                chain_pem=(directory / CHAIN_FILE).read_text(),
                ca_pem=(directory / CA_FILE).read_text(),
            )
        except FileNotFoundError as e:
            raise InsituError(ErrorCode.CONFIG, f"missing credential file {e.filename}") from None

    @classmethod
    def from_files(cls, key: Path, cert: Path, ca: Path, chain: Path | None = None) -> Credentials:
        try:
            return cls(
                key_pem=key.read_bytes(),
                cert_pem=cert.read_text(),
                chain_pem=chain.read_text() if chain else "",
                ca_pem=ca.read_text(),
            )
        except FileNotFoundError as e:
            raise InsituError(ErrorCode.CONFIG, f"missing credential file {e.filename}") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def now_utc() -> datetime:
    return datetime.now(UTC)
