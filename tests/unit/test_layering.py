"""The core is sans-IO: importing it must not pull in trio, httpx or socket."""

from __future__ import annotations

import subprocess
import sys


def _loaded(imports: str, modules: tuple[str, ...]) -> str:
    """Which of ``modules`` a fresh interpreter holds after ``import imports``."""
    code = (
        f"import sys, {imports};"
        f"print(','.join(m for m in {modules!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_core_imports_no_io() -> None:
    imports = "mesh.core.node, mesh.core.membership, mesh.codec, mesh.codec_routes"
    io = ("trio", "httpx", "socket", "hypercorn", "asyncio")
    assert _loaded(imports, io) == ""


def test_core_reads_no_clock() -> None:
    import pathlib

    import mesh.core

    root = pathlib.Path(mesh.core.__file__).parent
    for path in root.glob("*.py"):
        text = path.read_text()
        for banned in ("time.time(", "time.monotonic(", "import time", "datetime"):
            assert banned not in text, f"{path.name} uses {banned}"


def test_the_client_loads_neither_the_route_table_nor_numpy() -> None:
    """Client commands (``mesh put``, ``mesh members``, ...) import
    ``mesh.client``: they check a key but must not pay for numpy (~0.1 s) or
    the route table to do it."""
    table = ("numpy", "mesh.core.routes", "mesh.core.digest")
    assert _loaded("mesh.cli, mesh.cli_client, mesh.client", table) == ""
