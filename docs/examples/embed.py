"""Two mesh nodes inside one trio program: b joins a, a writes a route, b's
watcher sees it. Run: python docs/examples/embed.py (from the repository, with
the venv active). Everything listens on 127.0.0.1 with kernel-chosen ports.
"""

from __future__ import annotations

import trio

import mesh
from mesh.logs import configure_logging


def config(name: str, join: tuple[str, ...] = ()) -> mesh.Config:
    # Port 0 everywhere: the kernel picks free ports; node.address says which.
    return mesh.Config.local(
        name=name, bind=("127.0.0.1", 0), http=("127.0.0.1", 0), join=join
    )


async def main() -> None:
    with trio.fail_after(20):  # an example must not hang if something is wrong
        async with mesh.open_node(config("a")) as a:
            print(f"a listening: mesh={a.address} api={a.http_address}")
            async with mesh.open_node(config("b", join=(a.address,))) as b:
                # b is up once open_node returns, and ready (joined through a,
                # which then knows it too, and caught up) a moment later.
                await b.wait_ready()
                assert len(a.members()) == 2
                # b's table, kept in step with the mesh: a snapshot, then changes.
                table: dict[str, str] = {}
                watch = b.watch_routes(prefix="svc.")
                batch = await anext(watch)
                assert batch.snapshot
                # Returns once committed on a and queued for b; sync_timeout
                # also waits (at most 5 s) for b to acknowledge.
                await a.put_route("svc.api", "http://10.0.0.7:8080", sync_timeout=5)
                sync = a.last_sync  # who acknowledged within sync_timeout
                assert sync is not None
                print(f"a wrote svc.api; acked by {sync.acked}")
                async for batch in watch:
                    for event in batch.events:
                        if event.route is not None and not event.deleted:
                            table[event.key] = event.route.target
                    if "svc.api" in table:
                        break
                print(f"b sees svc.api -> {table['svc.api']}")
                print("b's members:")
                for m in b.members():
                    print(f"  {m.name} {m.address} {m.status.value}")
            # leaving the inner block: b left gracefully
        print("both nodes left the mesh")


if __name__ == "__main__":
    # The nodes log through structlog; an application decides where and how
    # much (the agent's --log-format/--log-level do the same).
    configure_logging(log_format="text", log_level="warning")
    trio.run(main)
