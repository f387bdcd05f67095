"""`insitu-audit`: the auditor's command line. Everything but `prune` works offline.

Commands: export, checkpoint, verify, prove-inclusion, prove-consistency, verify-proof, search,
report, hmac-check, prune, verify-archive, keygen. Exit codes: 0 success; 1 the log, a
proof or an archive failed verification (or hmac-check found nothing); 2 bad input or an
unusable source. This module is the only place audit errors become exit codes.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from insitu.audit.checkpoint import parse_public_key
from insitu.audit.errors import AuditError, CheckpointFormatError, VerificationError
from insitu.audit.export import (
    checkpoints_path_for,
    export_store,
    read_checkpoint_notes,
)
from insitu.audit.merkle import hash_leaf
from insitu.audit.proofs import consistency_bundle, inclusion_bundle, verify_bundle
from insitu.audit.record import Actor, canonical_bytes, parse_json_object
from insitu.audit.report import STANDARDS, IntegrityStatus, build_report
from insitu.audit.search import (
    SearchQuery,
    hmac_occurrences,
    records_from_export,
    records_from_store,
    search,
)
from insitu.audit.sensitive import SensitiveValueHasher
from insitu.audit.store import AuditStore, StoredCheckpoint
from insitu.audit.tree import MerkleTree
from insitu.audit.verify import VerifyResult, verify_export, verify_store
from insitu.errors import ErrorCode, InsituError

app = typer.Typer(
    help="insitu-audit: verify, prove, search and report on insitu audit logs, offline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_FAILED = 1
EXIT_INPUT = 2
F = TypeVar("F", bound=Callable[..., Any])

Db = Annotated[Path | None, typer.Option("--db", help="SQLite audit store file")]
Dsn = Annotated[str | None, typer.Option("--dsn", help="PostgreSQL DSN of the audit store")]
Schema = Annotated[str, typer.Option("--schema", help="PostgreSQL schema of the log")]
LogOpt = Annotated[Path | None, typer.Option("--log", help="an export (JSONL) instead of a store")]
Pubkey = Annotated[Path, typer.Option("--pubkey", help="log public key file (base64 raw Ed25519)")]
KeyName = Annotated[
    str | None, typer.Option("--key-name", help="signing key name (default: origin)")
]


class _Failed(Exception):
    """A verification verdict (exit 1), as opposed to unusable input (exit 2)."""


def _errors(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except VerificationError as e:
            err.print(f"[red]FAILED[/red] {e.detail}")
            sys.exit(EXIT_FAILED)
        except _Failed as e:
            err.print(f"[red]FAILED[/red] {e}")
            sys.exit(EXIT_FAILED)
        except InsituError as e:
            err.print(f"[red]error:[/red] {e.detail or e.code.value}")
            sys.exit(EXIT_INPUT)
        except (OSError, UnicodeDecodeError) as e:
            err.print(f"[red]error:[/red] {type(e).__name__}: {getattr(e, 'strerror', None) or e}")
            sys.exit(EXIT_INPUT)

    return wrapper  # type: ignore[return-value]


def _bad(msg: str) -> InsituError:
    return InsituError(ErrorCode.INVALID_ARGUMENT, msg)


def _open_store(
    db: Path | None, dsn: str | None, schema: str, *, writable: bool = False
) -> AuditStore:
    if (db is None) == (dsn is None):
        raise _bad("give exactly one of --db or --dsn")
    if db is not None:
        from insitu.audit.sqlite_store import SqliteAuditStore

        if not db.is_file():
            raise _bad(f"no audit store at {db}")
        return SqliteAuditStore(db, read_only=not writable)
    from insitu.audit.postgres_store import PostgresAuditStore

    assert dsn is not None
    return PostgresAuditStore(dsn, schema=schema, create=False)


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise _bad(f"{what} {path} does not exist")
    return path.read_text(encoding="utf-8")


def _note(path: Path) -> str:
    """A signed note from a file; trailing blank lines from editors are tolerated."""
    return _read_text(path, "checkpoint").rstrip("\n") + "\n"


def _pubkey(path: Path) -> bytes:
    return parse_public_key(_read_text(path, "public key"))


def _when(text: str | None, what: str) -> datetime | None:
    if text is None:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(f"{what} must be an ISO date or date-time, e.g. 2026-01-31") from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _export_lines(path: Path) -> Iterator[str]:
    if not path.is_file():
        raise _bad(f"log {path} does not exist")
    with path.open(encoding="utf-8") as f:
        yield from f


def _ok(result: VerifyResult) -> None:
    pruned = f" ({result.pruned} pruned)" if result.pruned else ""
    console.print(f"OK {result.size} entries{pruned}, root {result.root.hex()}")


# --- export / verify -----------------------------------------------------------------


@app.command()
@_errors
def export(
    out: Annotated[Path, typer.Option("--out", help="JSONL file to write")],
    db: Db = None,
    dsn: Dsn = None,
    schema: Schema = "insitu_audit",
    include_unsigned_tail: Annotated[
        bool, typer.Option(help="also export entries after the latest checkpoint")
    ] = False,
) -> None:
    """Export a store to JSONL plus OUT.checkpoints.jsonl and OUT.checkpoint."""
    with _open_store(db, dsn, schema) as store:
        s = export_store(store, out, include_unsigned_tail=include_unsigned_tail)
    console.print(
        f"exported {s.entries} entries ({s.pruned} pruned) and {s.checkpoints} checkpoints to {out}"
    )


@app.command()
@_errors
def verify(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="trusted signed checkpoint")],
    pubkey: Pubkey,
    log: Annotated[Path | None, typer.Argument(help="exported JSONL log")] = None,
    origin: Annotated[str | None, typer.Option(help="expected log origin")] = None,
    key_name: KeyName = None,
    checkpoints: Annotated[
        Path | None, typer.Option(help="checkpoints JSONL (default: LOG's sibling)")
    ] = None,
    db: Db = None,
    dsn: Dsn = None,
    schema: Schema = "insitu_audit",
) -> None:
    """Verify a log offline against a trusted checkpoint; name the first bad entry."""
    note, key = _note(checkpoint), _pubkey(pubkey)
    if log is not None:
        if db is not None or dsn is not None:
            raise _bad("give LOG or a store (--db/--dsn), not both")
        cps_path = checkpoints or checkpoints_path_for(log)
        notes = read_checkpoint_notes(cps_path) if cps_path.is_file() else []
        result = verify_export(
            _export_lines(log), note, key, key_name=key_name, origin=origin, checkpoint_notes=notes
        )
    else:
        with _open_store(db, dsn, schema) as store:
            result = verify_store(store, note, key, key_name=key_name, origin=origin)
    _ok(result)


@app.command("checkpoint")
@_errors
def latest_checkpoint_cmd(
    db: Db = None,
    dsn: Dsn = None,
    schema: Schema = "insitu_audit",
) -> None:
    """Print the store's latest signed checkpoint (trust it only via its signature)."""
    with _open_store(db, dsn, schema) as store:
        latest = store.latest_checkpoint()
    if latest is None:
        raise _bad("the store has no checkpoint yet")
    sys.stdout.write(latest.note)


# --- proofs --------------------------------------------------------------------------


def _tree_source(
    db: Path | None, dsn: str | None, schema: str, log: Path | None
) -> tuple[MerkleTree, list[StoredCheckpoint], Callable[[int], bytes | None]]:
    """The full tree, the checkpoints and a record reader, from a store or an export."""
    if log is not None:
        if db is not None or dsn is not None:
            raise _bad("give --log or a store (--db/--dsn), not both")
        tree, bodies = MerkleTree(), list[bytes]()
        for n, line in enumerate(_export_lines(log)):
            obj = parse_json_object(line)
            if "pruned_prefix" in obj:
                raise _bad("proofs need every leaf: use the store for a pruned log")
            if not isinstance(obj.get("record"), dict):
                raise _bad(f"{log} line {n + 1} is not an export entry")
            body = canonical_bytes(obj["record"])
            tree.append(hash_leaf(body))
            bodies.append(body)
        cps_path = checkpoints_path_for(log)
        notes = read_checkpoint_notes(cps_path) if cps_path.is_file() else []
        from insitu.audit.checkpoint import _unverified_parse

        cps = sorted(
            (StoredCheckpoint(_unverified_parse(n).size, n) for n in notes), key=lambda c: c.size
        )
        return tree, cps, lambda i: bodies[i] if i < len(bodies) else None
    store = _open_store(db, dsn, schema)
    tree = MerkleTree(store.leaf_hashes())
    cps = store.checkpoints()

    def read_body(i: int) -> bytes | None:
        return next((e.data for e in store.entries(i, i + 1)), None)

    return tree, cps, read_body


def _pick(cps: list[StoredCheckpoint], size: int | None, above: int) -> StoredCheckpoint:
    good = [c for c in cps if (c.size == size if size is not None else c.size > above)]
    if not good:
        want = f"of size {size}" if size is not None else f"covering index {above}"
        raise _bad(f"no stored checkpoint {want}")
    return good[-1]


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


@app.command("prove-inclusion")
@_errors
def prove_inclusion(
    index: Annotated[int, typer.Option("--index", min=0, help="leaf index (seq)")],
    out: Annotated[Path, typer.Option("--out", help="bundle JSON to write")],
    size: Annotated[
        int | None, typer.Option("--size", help="tree size (a checkpointed size)")
    ] = None,
    db: Db = None,
    dsn: Dsn = None,
    schema: Schema = "insitu_audit",
    log: LogOpt = None,
) -> None:
    """Write an inclusion proof bundle for entry INDEX (default: latest checkpoint)."""
    tree, cps, body = _tree_source(db, dsn, schema, log)
    cp = _pick(cps, size, index)
    if index >= cp.size:
        raise _bad(f"index {index} is not below tree size {cp.size}")
    _write_json(out, inclusion_bundle(tree, index, cp.note, body(index)))
    console.print(f"inclusion proof of {index} in tree {cp.size} written to {out}")


@app.command("prove-consistency")
@_errors
def prove_consistency(
    from_size: Annotated[int, typer.Option("--from", min=0, help="older tree size")],
    out: Annotated[Path, typer.Option("--out", help="bundle JSON to write")],
    to_size: Annotated[int | None, typer.Option("--to", help="newer, checkpointed size")] = None,
    db: Db = None,
    dsn: Dsn = None,
    schema: Schema = "insitu_audit",
    log: LogOpt = None,
) -> None:
    """Write a consistency proof bundle between tree sizes FROM and TO."""
    tree, cps, _ = _tree_source(db, dsn, schema, log)
    cp = _pick(cps, to_size, from_size - 1)
    if from_size > cp.size:
        raise _bad(f"--from {from_size} exceeds --to {cp.size}")
    old = next((c.note for c in reversed(cps) if c.size == from_size), None)
    _write_json(out, consistency_bundle(tree, from_size, cp.note, old))
    console.print(f"consistency proof {from_size} -> {cp.size} written to {out}")


@app.command("verify-proof")
@_errors
def verify_proof(
    bundle: Annotated[Path, typer.Argument(help="bundle JSON")],
    pubkey: Annotated[Path | None, typer.Option("--pubkey", help="log public key file")] = None,
    key_name: KeyName = None,
) -> None:
    """Check a proof bundle (RFC 6962); with --pubkey, also its checkpoint signature."""
    key = _pubkey(pubkey) if pubkey is not None else None
    try:
        check = verify_bundle(_read_text(bundle, "bundle"), public_key=key, key_name=key_name)
    except AuditError as e:
        raise _Failed(e.detail) from None
    console.print(f"OK {check.kind} proof, tree size {check.tree_size}, root {check.root.hex()}")
    if not check.signed:
        err.print("[yellow]warning:[/yellow] checkpoint signature not verified (give --pubkey)")


# --- search / report / hmac ----------------------------------------------------------


def _records(
    db: Path | None, dsn: str | None, schema: str, log: Path | None
) -> Iterator[dict[str, Any]]:
    if log is not None:
        if not log.is_file():
            raise _bad(f"log {log} does not exist")
        yield from records_from_export(log)
        return
    with _open_store(db, dsn, schema) as store:
        yield from records_from_store(store)


@app.command("search")
@_errors
def search_cmd(
    db: Db = None,
    dsn: Dsn = None,
    schema: Schema = "insitu_audit",
    log: LogOpt = None,
    actor: Annotated[str | None, typer.Option(help="SPIFFE id (substring)")] = None,
    action: Annotated[str | None, typer.Option(help="action (substring)")] = None,
    resource: Annotated[str | None, typer.Option(help="TYPE:ID, TYPE or ID")] = None,
    outcome: Annotated[str | None, typer.Option(help="success, failure or denied")] = None,
    event_type: Annotated[str | None, typer.Option("--event-type")] = None,
    since: Annotated[str | None, typer.Option("--from", help="from (inclusive), ISO")] = None,
    until: Annotated[str | None, typer.Option("--to", help="to (exclusive), ISO")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print records as JSONL")] = False,
    limit: Annotated[int, typer.Option(min=1)] = 1000,
) -> None:
    """Find records by actor, action, resource, outcome, event type or time range."""
    if outcome is not None and outcome not in ("success", "failure", "denied"):
        raise _bad("--outcome must be success, failure or denied")
    q = SearchQuery(
        actor, action, resource, outcome, event_type, _when(since, "--from"), _when(until, "--to")
    )
    table = Table("seq", "time", "actor", "action", "resource", "outcome")
    n = 0
    for rec in search(_records(db, dsn, schema, log), q):
        n += 1
        if n > limit:
            break
        if as_json:
            print(json.dumps(rec, sort_keys=True))
        else:
            r = rec["resource"]
            table.add_row(
                str(rec["seq"]),
                rec["time"],
                str(rec["actor"].get("spiffe_id") or "(system)"),
                rec["action"],
                f"{r['type']}:{r['id']}",
                rec["outcome"],
            )
    if not as_json:
        console.print(table)
        console.print(f"{min(n, limit)} matching records")


@app.command()
@_errors
def report(
    standard: Annotated[str, typer.Option("--standard", help="pci-dss or hipaa")],
    out: Annotated[Path, typer.Option("--out", help="HTML file to write")],
    db: Db = None,
    dsn: Dsn = None,
    schema: Schema = "insitu_audit",
    log: LogOpt = None,
    since: Annotated[str | None, typer.Option("--from", help="period start, ISO")] = None,
    until: Annotated[str | None, typer.Option("--to", help="period end (exclusive), ISO")] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="trusted checkpoint, to verify first")
    ] = None,
    pubkey: Annotated[Path | None, typer.Option(help="log public key file")] = None,
    key_name: KeyName = None,
) -> None:
    """Write a self-contained PCI DSS or HIPAA HTML report."""
    if standard not in STANDARDS:
        raise _bad(f"--standard must be one of {', '.join(STANDARDS)}")
    integrity = IntegrityStatus(False, "not verified: give --checkpoint and --pubkey")
    if checkpoint is not None and pubkey is not None:
        note, key = _note(checkpoint), _pubkey(pubkey)
        try:
            if log is not None:
                cps = checkpoints_path_for(log)
                res = verify_export(
                    _export_lines(log),
                    note,
                    key,
                    key_name=key_name,
                    checkpoint_notes=read_checkpoint_notes(cps) if cps.is_file() else [],
                )
            else:
                with _open_store(db, dsn, schema) as store:
                    res = verify_store(store, note, key, key_name=key_name)
            integrity = IntegrityStatus(True, f"OK {res.size} entries, root {res.root.hex()}")
        except VerificationError as e:
            integrity = IntegrityStatus(False, f"FAILED {e.detail}")
    html_text = build_report(
        _records(db, dsn, schema, log),
        standard=standard,
        integrity=integrity,
        since=_when(since, "--from"),
        until=_when(until, "--to"),
    )
    out.write_text(html_text, encoding="utf-8")
    console.print(f"report written to {out} (integrity: {integrity.detail})")


@app.command("hmac-check")
@_errors
def hmac_check(
    key_file: Annotated[Path, typer.Option("--key-file", help="HMAC data key (base64)")],
    value: Annotated[
        str | None, typer.Option(help="value to look for (prompted, hidden, when omitted)")
    ] = None,
    db: Db = None,
    dsn: Dsn = None,
    schema: Schema = "insitu_audit",
    log: LogOpt = None,
) -> None:
    """Does a sensitive value appear in the log? (exit 0: yes, 1: no)."""
    try:
        key = base64.b64decode(_read_text(key_file, "key file").strip(), validate=True)
    except (binascii.Error, ValueError):
        raise _bad("key file must hold the base64 data key") from None
    hasher = SensitiveValueHasher(key)
    if value is None:
        value = typer.prompt("value", hide_input=True)
    hits = list(hmac_occurrences(_records(db, dsn, schema, log), hasher, value))
    for seq, field in hits:
        console.print(f"seq {seq}: sensitive.{field}")
    if not hits:
        raise _Failed("value does not appear in the log")
    console.print(f"{len(hits)} occurrence(s)")


# --- retention -----------------------------------------------------------------------


@app.command()
@_errors
def prune(
    before: Annotated[str, typer.Option("--before", help="prune records older than this date")],
    archive: Annotated[Path, typer.Option("--archive", help="archive JSON to write")],
    origin: Annotated[str, typer.Option(help="log origin (as in its checkpoints)")],
    actor: Annotated[str, typer.Option(help="SPIFFE id of the operator pruning")],
    db: Db = None,
    dsn: Dsn = None,
    schema: Schema = "insitu_audit",
    key_name: KeyName = None,
    retention_days: Annotated[int, typer.Option(min=1, help="retention period")] = 365,
    signing_key: Annotated[
        Path | None, typer.Option(help="local Ed25519 seed file (dev); else Vault transit")
    ] = None,
    vault_addr: Annotated[str | None, typer.Option(envvar="VAULT_ADDR")] = None,
    vault_token: Annotated[
        str | None, typer.Option(envvar="VAULT_TOKEN", show_default=False)
    ] = None,
    transit_key: Annotated[str, typer.Option(help="Vault transit signing key")] = "audit-signing",
) -> None:
    """Archive and prune record bodies older than the retention period (logged)."""
    from insitu.audit.log import AuditLog
    from insitu.audit.prune import prune as do_prune

    cutoff = _when(before, "--before")
    assert cutoff is not None
    if signing_key is not None:
        from insitu.audit.signing import LocalSigner

        local = LocalSigner.from_file(signing_key)
        sign: Callable[[bytes], bytes] = local.sign
        pub = local.public_key
    elif vault_addr and vault_token:
        from insitu.keys import KeyService

        keys = KeyService.from_token(vault_addr, vault_token)
        pub = keys.public_key(transit_key)

        def vault_sign(m: bytes) -> bytes:
            return keys.sign(transit_key, m)

        sign = vault_sign
    else:
        raise _bad(
            "give --signing-key, or --vault-addr and --vault-token (or VAULT_ADDR/VAULT_TOKEN)"
        )
    store = _open_store(db, dsn, schema, writable=True)
    log = AuditLog(
        store,
        origin=origin,
        signer=sign,
        key_name=key_name or origin,
        public_key=pub,
        checkpoint_every_s=0,
        lifecycle_events=False,
    )
    try:
        res = do_prune(
            log,
            before=cutoff,
            archive_path=archive,
            retention=timedelta(days=retention_days),
            actor=Actor(spiffe_id=actor, auth_method="cli", role="admin"),
        )
    finally:
        log.close()
    console.print(
        f"pruned bodies of entries [{res.start}, {res.end}); archive {archive} "
        f"(sha256 {res.archive_sha256}); checkpoint size {res.checkpoint.size}"
    )


@app.command("verify-archive")
@_errors
def verify_archive_cmd(
    archive: Annotated[Path, typer.Argument(help="archive JSON written by prune")],
    pubkey: Pubkey,
    key_name: KeyName = None,
) -> None:
    """Check a prune archive against its signed checkpoint."""
    from insitu.audit.prune import verify_archive

    try:
        start, end, size = verify_archive(
            _read_text(archive, "archive"), _pubkey(pubkey), key_name=key_name
        )
    except (AuditError, CheckpointFormatError) as e:
        raise _Failed(e.detail) from None
    console.print(f"OK archive of entries [{start}, {end}), consistent with signed tree {size}")


@app.command()
@_errors
def keygen(
    out: Annotated[Path, typer.Option("--out", help="private seed file to write (0600)")],
    pubkey_out: Annotated[Path | None, typer.Option("--pubkey-out")] = None,
) -> None:
    """Generate a local Ed25519 signing key (development and offline tests only)."""
    from insitu.audit.signing import LocalSigner

    if out.exists():
        raise _bad(f"{out} exists; refusing to overwrite a key")
    signer = LocalSigner.generate()
    signer.save(out)
    if pubkey_out is not None:
        pubkey_out.write_text(signer.public_key_b64() + "\n", encoding="utf-8")
    console.print(signer.public_key_b64())
