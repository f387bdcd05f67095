from dataclasses import dataclass
from pathlib import Path

import pytest

from insitu.cli.common import parse_duration
from insitu.errors import InsituError
from insitu.settings import load_settings


@dataclass(frozen=True)
class S:
    name: str
    port: int = 1
    on: bool = False


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[x]\nname = "file"\nport = 2\n')
    assert load_settings(S, "x", file=f, env={}) == S("file", 2)
    assert load_settings(S, "x", file=f, env={"INSITU_X_PORT": "3"}) == S("file", 3)
    assert load_settings(
        S, "x", file=f, env={"INSITU_X_PORT": "3"}, overrides={"port": 4, "on": True}
    ) == S("file", 4, True)


def test_unknown_and_invalid_settings_are_errors(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[x]\nname = "a"\nprot = 2\n')
    with pytest.raises(InsituError, match="unknown"):
        load_settings(S, "x", file=f, env={})
    with pytest.raises(InsituError, match="invalid"):
        load_settings(S, "x", env={"INSITU_X_NAME": "a", "INSITU_X_PORT": "many"})


@pytest.mark.parametrize("text,secs", [("90s", 90), ("30m", 1800), ("1h", 3600), ("7d", 604800)])
def test_durations(text: str, secs: int) -> None:
    assert parse_duration(text) == secs


@pytest.mark.parametrize("text", ["", "1", "1w", "-1h", "0s", "h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InsituError):
        parse_duration(text)
