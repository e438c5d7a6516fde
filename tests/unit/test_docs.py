"""Generated docs stay in step with the code."""

from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_configuration_doc_is_current() -> None:
    spec = importlib.util.spec_from_file_location(
        "docs_config", ROOT / "scripts" / "docs_config.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == module.render(), (
        "run: python scripts/docs_config.py > docs/configuration.md"
    )


def test_public_api_is_curated() -> None:
    import mesh

    assert sorted(mesh.__all__) == sorted(
        [
            "Config", "ConfigError", "DecodeError", "LocalProtocolError",
            "MemberStatus", "MeshError", "Node", "ProtocolError",
            "RemoteProtocolError", "TransportError", "__version__", "open_node",
        ]
    )  # fmt: skip
    for name in mesh.__all__:
        assert hasattr(mesh, name)


def test_metrics_catalogue_matches_a_scrape() -> None:
    import re

    import trio
    from prometheus_client import generate_latest

    from mesh.config import Config
    from mesh.shell.agent import Agent

    async def scrape() -> str:
        agent = Agent(Config.local(name="doc"), addr=("127.0.0.1", 1), now=0.0)
        return generate_latest(agent.metrics.registry).decode()

    types = re.findall(r"^# TYPE (\S+) ", trio.run(scrape), re.MULTILINE)
    # prometheus_client adds a `<counter>_created` gauge beside each counter
    exported = {
        name.removesuffix("_total") for name in types if not name.endswith("_created")
    }
    documented = set(
        re.findall(
            r"^\| `((?:mesh|process)_[a-z_]+)` \|",
            (ROOT / "docs" / "metrics.md").read_text(),
            re.MULTILINE,
        )
    )
    assert exported == documented, (
        "run: python scripts/docs_metrics.py > docs/metrics.md"
    )


def test_every_alert_has_its_runbook_and_the_count_is_right() -> None:
    """operations.md explains each rule of alerts.yaml under its name, and
    says how many there are (audit 7 found the count one behind)."""
    import re

    rules = re.findall(
        r"^\s+- alert: (\w+)$",
        (ROOT / "docs" / "deploy" / "alerts.yaml").read_text(),
        re.MULTILINE,
    )
    ops = (ROOT / "docs" / "operations.md").read_text()
    assert rules
    for name in rules:
        assert f"\n### {name}\n" in ops, name
    (count,) = re.findall(r"holds the rules \((\d+) of them", ops)
    assert int(count) == len(rules)
