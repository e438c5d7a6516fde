"""The security settings through the existing config layers (flag, MESH_*,
TOML), their start-up checks, `mesh keygen`, and the token file."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.cli import load_config, main
from mesh.config import Config
from mesh.errors import ConfigError
from mesh.security import decode_key, encode_key
from mesh.shell.auth import load_api_token

KEY = encode_key(bytes(range(32)))


def name() -> str:
    return "n"


def test_encrypt_from_each_layer(tmp_path: Path) -> None:
    toml = tmp_path / "mesh.toml"
    toml.write_text(f'encrypt = "{KEY}"\nreplay_window = 10\n')
    from_file = load_config({"config": str(toml)}, {}, default_name=name)
    assert from_file.encrypt == KEY
    assert from_file.replay_window == 10.0
    assert load_config({}, {"MESH_ENCRYPT": KEY}, default_name=name).encrypt == KEY
    other = encode_key(bytes(16))
    flags = {"encrypt": other, "config": str(toml)}
    assert load_config(flags, {"MESH_ENCRYPT": KEY}, default_name=name).encrypt == other


def test_key_never_in_repr() -> None:
    config = Config(encrypt=KEY, api_token="s3cret")
    assert KEY not in repr(config)
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    "values",
    [
        {"encrypt": "not base64"},
        {"encrypt": encode_key(bytes(20))},
        {"api_token": "a", "api_token_file": "/x"},
        {"api_token": "  "},
        {"tls_cert": "/c"},
        {"tls_key": "/k"},
        {"tls_ca": "/ca"},
        {"replay_window": 0},
        {"replay_cache_max": 0},
        {"peer_http_concurrency": 0},
    ],
)
def test_bad_security_settings_are_config_errors(values: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Config(**values)  # type: ignore[arg-type]


def test_cli_bad_key_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "--name", "x", "--encrypt", "nope"]) == 2
    assert "encrypt" in capsys.readouterr().err


@pytest.mark.parametrize("size", [16, 24, 32])
def test_keygen(capsys: pytest.CaptureFixture[str], size: int) -> None:
    assert main(["keygen", "--bytes", str(size)]) == 0
    first = capsys.readouterr().out.strip()
    assert len(decode_key(first)) == size
    main(["keygen", "--bytes", str(size)])
    assert capsys.readouterr().out.strip() != first


def test_api_token_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("  tok3n  \nignored\n")
    assert load_api_token(Config(api_token_file=str(path))) == "tok3n"
    assert load_api_token(Config(api_token="direct")) == "direct"
    assert load_api_token(Config()) is None
    path.write_text("\n")
    with pytest.raises(ConfigError):
        load_api_token(Config(api_token_file=str(path)))
    with pytest.raises(ConfigError):
        load_api_token(Config(api_token_file=str(tmp_path / "missing")))
    path.write_bytes(b"x" * 5000)
    with pytest.raises(ConfigError):
        load_api_token(Config(api_token_file=str(path)))
