"""The core is sans-IO: importing it must not pull in trio, httpx or socket."""

from __future__ import annotations

import subprocess
import sys


def test_core_imports_no_io() -> None:
    code = (
        "import sys, mesh.core.node, mesh.core.membership, mesh.codec,"
        " mesh.codec_routes;"
        "bad = [m for m in ('trio', 'httpx', 'socket', 'hypercorn', 'asyncio')"
        " if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


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
    code = (
        "import sys, mesh.cli, mesh.cli_client, mesh.client;"
        "bad = [m for m in ('numpy', 'mesh.core.routes', 'mesh.core.digest')"
        " if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
