import stat
from pathlib import Path

import pytest

from insitu.errors import InsituError
from insitu.identity.credentials import (
    Credentials,
    build_csr,
    generate_private_key,
    write_private_file,
)
from insitu.identity.csr import validate_csr
from insitu.identity.spiffe import SpiffeId


def test_private_file_is_0600_from_the_start(tmp_path: Path) -> None:
    p = tmp_path / "d" / "key.pem"
    write_private_file(p, b"secret")
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert p.read_bytes() == b"secret"


def test_load_refuses_group_readable_key(tmp_path: Path) -> None:
    for name in ("key.pem", "cert.pem", "chain.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    (tmp_path / "key.pem").chmod(0o640)
    with pytest.raises(InsituError, match="readable by others"):
        Credentials.load(tmp_path)


def test_csr_validation() -> None:
    csr = build_csr(generate_private_key(), SpiffeId.site("demo.insitu", "a"))
    assert validate_csr(csr).is_signature_valid
    tampered = csr.replace(csr.splitlines()[3], csr.splitlines()[3][::-1])
    with pytest.raises(InsituError):
        validate_csr(tampered)
