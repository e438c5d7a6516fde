"""The request bodies of the per-route path benchmarks (``route_path_cost.py``,
``route_path_instr.py``): what a client's batch call carries. No ``mesh``
import, so a benchmark can import it before choosing which tree's ``mesh``
it loads."""

from __future__ import annotations

import json


def put_bodies(n: int, batch: int) -> list[bytes]:
    """``n`` routes with unique keys as ``POST /v1/routes`` bodies of ``batch``."""
    return [
        json.dumps(
            {
                "put": [
                    {
                        "key": f"w-{b}-{i}",
                        "target": "10.0.0.1:8080",
                        "meta": {"bench": "wrk"},
                    }
                    for i in range(batch)
                ]
            }
        ).encode()
        for b in range(n // batch)
    ]
