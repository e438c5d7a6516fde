"""The base of the simulator state machines: the net and who is up."""

from __future__ import annotations

from typing import ClassVar

from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from mesh.testing.simnet import SimNet, SimNode


class SimMachine(RuleBasedStateMachine):
    """A state machine driving one :class:`SimNet` (made by an
    ``@initialize`` rule of the subclass, which sets ``next_name``)."""

    #: most nodes ever added
    max_nodes: ClassVar[int]

    def __init__(self) -> None:
        super().__init__()
        self.sim: SimNet | None = None
        self.next_name = 0

    @property
    def net(self) -> SimNet:
        assert self.sim is not None
        return self.sim

    def up(self) -> list[SimNode]:
        return [n for n in self.net.nodes.values() if n.up]

    def runnable(self) -> list[SimNode]:
        """Up, not paused, not leaving: may be paused, crashed or leave."""
        return [n for n in self.up() if not n.paused and not n.core.membership.leaving]

    def seeds(self) -> list[tuple[str, int]]:
        return [n.addr for n in self.up()]

    @precondition(lambda self: len(self.net.nodes) < self.max_nodes)
    @rule()
    def join(self) -> None:
        """A new node joins through the seeds that are up."""
        name = f"n{self.next_name}"
        self.next_name += 1
        self.net.add_node(name, seeds=self.seeds())

    def quiesce(self) -> None:
        """Stop the faults: heal partitions, no loss, resume every paused node
        (teardown, before the settle)."""
        sim = self.net
        sim.heal()
        sim.set_loss(0.0)
        for node in self.up():
            sim.resume(node.name)
