"""The base of the simulator state machines: the net and who is up."""

from __future__ import annotations

from hypothesis.stateful import RuleBasedStateMachine

from mesh.testing.simnet import SimNet, SimNode


class SimMachine(RuleBasedStateMachine):
    """A state machine driving one :class:`SimNet` (made by an
    ``@initialize`` rule of the subclass)."""

    def __init__(self) -> None:
        super().__init__()
        self.sim: SimNet | None = None

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

    def quiesce(self) -> None:
        """Stop the faults: heal partitions, no loss, resume every paused node
        (teardown, before the settle)."""
        sim = self.net
        sim.heal()
        sim.set_loss(0.0)
        for node in self.up():
            sim.resume(node.name)
