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
            "MemberStatus", "MeshError", "ProtocolError", "RemoteProtocolError",
            "TransportError", "__version__",
        ]
    )  # fmt: skip
    for name in mesh.__all__:
        assert hasattr(mesh, name)
