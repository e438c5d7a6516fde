"""Configuration layers: flag > MESH_* environment > TOML file > profile."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from mesh.cli import load_config
from mesh.config import Config
from mesh.errors import ConfigError


def load(
    flags: dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> Config:
    return load_config(flags or {}, env or {}, default_name=lambda: "host-1")


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mesh.toml"
    path.write_text(text)
    return str(path)


def test_defaults_are_the_lan_profile_named_after_the_host() -> None:
    config = load()
    assert config == Config.lan(name="host-1")
    assert config.bind == ("0.0.0.0", 7946)
    assert config.http == ("127.0.0.1", 8946)


def test_profile_sets_defaults_and_file_overrides_them(tmp_path: Path) -> None:
    path = write(tmp_path, 'profile = "local"\ntcp_timeout = 3.5\n')
    config = load({"config": path})
    assert config.profile == "local"
    assert config.probe_interval == Config.local().probe_interval
    assert config.tcp_timeout == 3.5


@pytest.mark.parametrize(
    ("file", "env", "flag", "expected"),
    [
        (None, None, None, ("0.0.0.0", 7946)),
        ("10.0.0.1:1", None, None, ("10.0.0.1", 1)),
        ("10.0.0.1:1", "10.0.0.2:2", None, ("10.0.0.2", 2)),
        ("10.0.0.1:1", "10.0.0.2:2", "10.0.0.3:3", ("10.0.0.3", 3)),
        (None, None, "10.0.0.3:3", ("10.0.0.3", 3)),
        ("10.0.0.1:1", None, "10.0.0.3:3", ("10.0.0.3", 3)),
    ],
)
def test_precedence_flag_env_file_default(
    tmp_path: Path,
    file: str | None,
    env: str | None,
    flag: str | None,
    expected: tuple[str, int],
) -> None:
    flags: dict[str, Any] = {}
    environ: dict[str, str] = {}
    if file is not None:
        flags["config"] = write(tmp_path, f'bind = "{file}"\n')
    if env is not None:
        environ["MESH_BIND"] = env
    if flag is not None:
        flags["bind"] = flag
    assert load(flags, environ).bind == expected


def test_tunables_from_env_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "probe_interval = 2\nsuspicion_mult = 7\n")
    config = load(
        {"config": path},
        {"MESH_PROBE_INTERVAL": "1.5", "MESH_TCP_FALLBACK_PROBE": "false"},
    )
    assert config.probe_interval == 1.5  # env over file
    assert config.suspicion_mult == 7  # file over default
    assert config.tcp_fallback_probe is False


def test_profile_from_env_with_flag_overrides() -> None:
    config = load({"name": "n1"}, {"MESH_PROFILE": "wan", "MESH_NAME": "ignored"})
    assert config.profile == "wan"
    assert config.probe_interval == Config.wan().probe_interval
    assert config.name == "n1"


def test_join_and_tags_from_each_layer(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'join = ["f1:1", "f2:2"]\ntags = { zone = "file", tier = "t" }\n',
    )
    from_file = load({"config": path})
    assert from_file.join == ("f1:1", "f2:2")
    assert from_file.tags == {"zone": "file", "tier": "t"}
    env = {"MESH_JOIN": " e1:1, e2:2\te3:3 ", "MESH_TAG": "zone=env,role=web"}
    from_env = load({"config": path}, env)
    assert from_env.join == ("e1:1", "e2:2", "e3:3")
    assert from_env.tags == {"zone": "env", "role": "web"}  # replaced, not merged
    flags = {"config": path, "join": ["x:1"], "tag": ["zone=flag", "eq=a=b"]}
    from_flags = load(flags, env)
    assert from_flags.join == ("x:1",)
    assert from_flags.tags == {"zone": "flag", "eq": "a=b"}


def test_config_file_from_env(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "from-file"\n')
    assert load(env={"MESH_CONFIG": path}).name == "from-file"


def test_empty_env_values_are_unset() -> None:
    assert load(env={"MESH_BIND": "", "MESH_JOIN": "  "}).bind == ("0.0.0.0", 7946)


@pytest.mark.parametrize(
    ("flags", "env", "file", "message"),
    [
        ({}, {"MESH_PROBE_INTERVAL": "fast"}, None, "MESH_PROBE_INTERVAL must be"),
        ({}, {"MESH_PROBE_INTERVAL": "nan"}, None, "MESH_PROBE_INTERVAL must be"),
        ({}, {"MESH_SUSPICION_MULT": "2.5"}, None, "MESH_SUSPICION_MULT must be"),
        ({}, {"MESH_TCP_FALLBACK_PROBE": "maybe"}, None, "true or false"),
        ({}, {"MESH_PROFILE": "moon"}, None, "profile must be one of"),
        ({}, {"MESH_TAG": "novalue"}, None, "MESH_TAG must be KEY=VALUE"),
        ({"bind": "nope"}, {}, None, "--bind"),
        ({"bind": "1.2.3.4:99999"}, {}, None, "port must be in 0..65535"),
        ({"tag": ["x"]}, {}, None, "--tag must be KEY=VALUE"),
        ({"tag": [" =x"]}, {}, None, "--tag must be KEY=VALUE with a KEY"),
        ({"name": "bad name"}, {}, None, "name must match"),
        ({}, {}, "surprise = 1\n", "unknown setting 'surprise'"),
        # as for the environment's names (operator audit, session 14)
        (
            {},
            {},
            "probe_intervall = 1.0\n",
            "unknown setting 'probe_intervall' (did you mean 'probe_interval'?)",
        ),
        ({}, {}, "probe_interval = 'x'\n", "probe_interval must be a number"),
        ({}, {}, "suspicion_mult = true\n", "suspicion_mult must be an integer"),
        ({}, {}, "join = 3\n", "join must be a list"),
        ({}, {}, "tags = { a = 1 }\n", "tags must be a table of strings"),
        ({}, {}, "bind = [1]\n", "bind must be a HOST:PORT string"),
        ({}, {}, "this is = not toml =\n", "invalid TOML"),
        ({}, {}, "probe_timeout = 5.0\n", "probe_timeout must be < probe_interval"),
        # below it every request is a 431, /v1/health too (audit 11)
        ({}, {"MESH_HTTP_MAX_HEADER_BYTES": "10"}, None, "must be an integer >= 4096"),
        ({}, {}, "http_max_header_bytes = 4095\n", "must be an integer >= 4096"),
        # the nack must beat the requester's own deadline
        ({}, {"MESH_NACK_TIMEOUT_FRACTION": "1.5"}, None, "must be > 0 and < 1"),
        ({}, {}, "nack_timeout_fraction = 1\n", "must be > 0 and < 1"),
    ],
)
def test_bad_values_raise_config_error_naming_the_source(
    tmp_path: Path,
    flags: dict[str, Any],
    env: dict[str, str],
    file: str | None,
    message: str,
) -> None:
    if file is not None:
        flags = {**flags, "config": write(tmp_path, file)}
    with pytest.raises(ConfigError) as info:
        load(flags, env)
    assert message in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load({"config": str(tmp_path / "absent.toml")})


@pytest.mark.parametrize(
    ("field", "value"),
    [("log_level", "loud"), ("log_level", 10), ("log_format", "xml")],
)
def test_a_bad_log_setting_is_refused_when_the_config_is_built(
    field: str, value: object
) -> None:
    """As the CLI refuses it; an embedding caller's config was refused only
    inside open_node, and only when mesh configured logging (audit, session
    14). Levels are case-blind, as configure_logging takes them."""
    with pytest.raises(ConfigError, match=f"{field} must be one of"):
        Config.local(name="a", **{field: value})
    assert Config.local(name="a", log_level="WARNING").log_level == "WARNING"


def test_a_name_that_is_not_a_string_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="name must match"):
        Config.local(name=5)  # type: ignore[arg-type]


def test_oversized_tag_set_is_refused() -> None:
    tags = [f"key{i}=" + "v" * 40 for i in range(20)]
    with pytest.raises(ConfigError, match="over max_tags_bytes"):
        load({"tag": tags})


@pytest.mark.parametrize(
    ("flags", "env", "file"),
    [
        ({"advertise": "localhost:7946"}, {}, None),
        ({}, {"MESH_ADVERTISE": "mesh-0.mesh.svc:7946"}, None),
        ({}, {}, 'advertise = "node1.example:7946"\n'),
        ({"advertise": "0.0.0.0:7946"}, {}, None),
        ({"advertise": "[::]:7946"}, {}, None),
    ],
)
def test_advertise_must_be_an_ip_address(
    tmp_path: Path, flags: dict[str, Any], env: dict[str, str], file: str | None
) -> None:
    # A hostname would half work (UDP refuses to resolve per datagram:
    # send_bad_address), the wildcard reaches nobody: start-up errors.
    if file is not None:
        flags = {**flags, "config": write(tmp_path, file)}
    with pytest.raises(ConfigError, match="advertise must be an IP address"):
        load(flags, env)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("192.0.2.7:7946", ("192.0.2.7", 7946)),
        ("[2001:db8::7]:7946", ("2001:db8::7", 7946)),
        ("[fe80::1%eth0]:7946", ("fe80::1%eth0", 7946)),
        ("192.0.2.7:0", ("192.0.2.7", 0)),  # port 0: the bound port
    ],
)
def test_advertise_ip_addresses_are_accepted(
    value: str, expected: tuple[str, int]
) -> None:
    assert load({"advertise": value}).advertise == expected


def test_wildcard_bind_without_advertise_is_fine() -> None:
    # The shell derives the advertised address from the host's interfaces.
    config = load({"bind": "0.0.0.0:7946"})
    assert config.advertise is None


def test_hostname_advertise_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    from mesh.cli import main

    assert main(["agent", "--name", "n", "--advertise", "localhost:7946"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mesh: error: ")
    assert "advertise must be an IP address" in err
    assert "'localhost'" in err


@pytest.mark.parametrize(
    ("seed", "message"),
    [
        ("nope", "join: address 'nope' must be HOST:PORT"),
        ("host:", "join: address 'host:': port must be an integer"),
        ("host:99999", "port must be in 0..65535"),
        ("host:0", "join: seed 'host:0' needs a port in 1..65535"),
    ],
)
def test_a_malformed_seed_is_a_start_up_error(seed: str, message: str) -> None:
    # It could never be joined: retrying it forever hid the typo.
    with pytest.raises(ConfigError, match=re.escape(message)):
        load({"join": [seed]})
    with pytest.raises(ConfigError, match=re.escape(message)):
        load({}, {"MESH_JOIN": f"127.0.0.1:7946,{seed}"})


@pytest.mark.parametrize(
    "seed", ["seed.example:7946", "10.0.0.1:7946", "[2001:db8::1]:7946"]
)
def test_well_formed_seeds_are_kept_even_unresolved(seed: str) -> None:
    # A name that does not resolve yet is retried at run time (contract).
    assert load({"join": [seed]}).join == (seed,)


def test_the_examples_of_mesh_agent_help_load(tmp_path: Path) -> None:
    """The TOML and environment examples in ``mesh agent --help`` are valid
    as printed (audit 7: probe_interval 0.5 failed validation against the
    lan profile's probe_timeout 0.5)."""
    from mesh.cli import _AGENT_EPILOG

    toml = "\n".join(
        line.split("#")[0].strip()
        for line in _AGENT_EPILOG.split("TOML file (--config):")[1].splitlines()[1:]
        if line.startswith("    ")
    )
    path = tmp_path / "mesh.toml"
    path.write_text(toml)
    from_file = load({"config": str(path)})
    assert from_file.probe_interval == 2.0
    (name, value) = re.findall(r"e\.g\. (MESH_\w+)=(\S+?)\.?$", _AGENT_EPILOG, re.M)[0]
    assert load(env={name: value}).probe_interval == float(value)


@pytest.mark.parametrize(
    ("bind", "http", "refused"),
    [
        ("127.0.0.1:7946", "127.0.0.1:7946", True),
        ("0.0.0.0:7946", "127.0.0.1:7946", True),  # the wildcard holds it too
        ("127.0.0.1:7946", "[::]:7946", True),
        ("127.0.0.1:7946", "127.0.0.2:7946", False),  # two hosts, two sockets
        ("127.0.0.1:7946", "127.0.0.1:8946", False),
        ("127.0.0.1:0", "127.0.0.1:0", False),  # two ports the kernel picks
    ],
)
def test_the_client_api_cannot_share_the_mesh_tcp_port(
    bind: str, http: str, refused: bool
) -> None:
    """The mesh port serves peers over TCP as well as SWIM over UDP: an API
    on the same TCP port is an inconsistent config (exit 2), not a bind
    failure deep in the servers' start-up (audit, session 13: a traceback)."""
    flags = {"bind": bind, "http": http}
    if refused:
        with pytest.raises(ConfigError, match="are one TCP port"):
            load(flags, {})
    else:
        load(flags, {})


def test_a_token_given_one_way_overrides_the_other_way_from_below(
    tmp_path: Path,
) -> None:
    """api_token and api_token_file are one setting spelt two ways: flags >
    environment > file holds across the spellings (audit, session 13: an
    exported MESH_API_TOKEN, as the client commands read it, made
    --api-token-file a start-up conflict). One layer giving both is still
    refused."""
    env = {"MESH_API_TOKEN": "from-env"}
    config = load({"api_token_file": "/run/token"}, env)
    assert (config.api_token, config.api_token_file) == (None, "/run/token")
    file = write(tmp_path, 'api_token_file = "/etc/token"\n')
    config = load({"config": file}, env)
    assert (config.api_token, config.api_token_file) == ("from-env", None)
    config = load({"config": file}, {})
    assert (config.api_token, config.api_token_file) == (None, "/etc/token")
    with pytest.raises(ConfigError, match="exclusive"):
        load({}, {"MESH_API_TOKEN": "a", "MESH_API_TOKEN_FILE": "/x"})
