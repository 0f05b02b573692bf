"""The server's run slots and each caller's share: who runs, who waits, in what order, and who is
refused as busy. Logic only (the real tier is tests/mcp/test_queueing.py)."""

from __future__ import annotations

import anyio
import pytest

from agent_sandbox.admission import Admission, Busy, Caller, Share

pytestmark = pytest.mark.anyio

ONE = Caller("one")  # the whole server, as a stdio client has it
HTTP = Share(running=1, queued=2)


class Runs:
    """Starts runs that hold their slot until released, and records the order they got one."""

    def __init__(self, admission: Admission, group: anyio.abc.TaskGroup):
        self.admission = admission
        self.group = group
        self.order: list[str] = []
        self.told: dict[str, list[int]] = {}
        self._release: dict[str, anyio.Event] = {}
        self._scopes: dict[str, anyio.CancelScope] = {}

    async def start(self, name: str, caller: Caller) -> None:
        release = self._release[name] = anyio.Event()
        self.told[name] = []

        async def told(ahead: int) -> None:
            self.told[name].append(ahead)

        async def run() -> None:
            with anyio.CancelScope() as scope:
                self._scopes[name] = scope
                async with self.admission.admit(caller, told):
                    self.order.append(name)
                    await release.wait()

        self.group.start_soon(run)
        await anyio.wait_all_tasks_blocked()

    async def finish(self, name: str) -> None:
        self._release[name].set()
        await anyio.wait_all_tasks_blocked()

    async def cancel(self, name: str) -> None:
        self._scopes[name].cancel()
        await anyio.wait_all_tasks_blocked()


async def test_calls_past_the_slots_wait_in_order_and_hear_how_many_are_ahead() -> None:
    admission = Admission(slots=2, queue=10)
    async with anyio.create_task_group() as group:
        runs = Runs(admission, group)
        for name in "abcde":
            await runs.start(name, ONE)
        assert runs.order == ["a", "b"]
        assert (admission.running, admission.queued) == (2, 3)
        assert runs.told == {"a": [], "b": [], "c": [0], "d": [1], "e": [2]}
        await runs.finish("a")
        assert runs.order == ["a", "b", "c"]
        assert runs.told["d"] == [1, 0]
        assert runs.told["e"] == [2, 1]
        for name in "bcde":
            await runs.finish(name)
        assert runs.order == list("abcde")
    assert (admission.running, admission.queued) == (0, 0)


async def test_a_full_server_queue_is_busy_and_says_how_many_wait() -> None:
    admission = Admission(slots=1, queue=2)
    async with anyio.create_task_group() as group:
        runs = Runs(admission, group)
        for name in "abc":
            await runs.start(name, ONE)
        with pytest.raises(Busy, match="1 runs are in progress and 2 are waiting, the most it queues"):
            async with admission.admit(ONE):
                pass
        for name in "abc":
            await runs.finish(name)


async def test_a_client_waits_behind_its_share_while_others_use_free_slots() -> None:
    admission = Admission(slots=3, queue=10)
    alice, bob = Caller("alice", HTTP), Caller("bob", HTTP)
    async with anyio.create_task_group() as group:
        runs = Runs(admission, group)
        await runs.start("a1", alice)
        await runs.start("a2", alice)  # over alice's share of 1: waits though slots are free
        await runs.start("b1", bob)  # bob is under his: runs at once, past alice's waiter
        assert runs.order == ["a1", "b1"]
        await runs.start("a3", alice)
        with pytest.raises(Busy, match="this client is busy: it has 1 runs in progress and 2 waiting"):
            async with admission.admit(alice):
                pass
        await runs.finish("a1")
        assert runs.order == ["a1", "b1", "a2"]  # alice's own, in her order
        for name in ("b1", "a2", "a3"):
            await runs.finish(name)
        assert runs.order == ["a1", "b1", "a2", "a3"]


async def test_waiters_held_back_by_their_own_share_are_not_counted_ahead() -> None:
    admission = Admission(slots=2, queue=10)
    alice, bob = Caller("alice", HTTP), Caller("bob", HTTP)
    async with anyio.create_task_group() as group:
        runs = Runs(admission, group)
        await runs.start("a1", alice)
        await runs.start("b1", bob)  # both slots taken
        await runs.start("a2", alice)  # waits for a slot and for alice's share
        await runs.start("c1", Caller("carol", HTTP))
        assert runs.told["c1"] == [0]  # a2 waits on alice's share too: carol's run will pass it
        await runs.finish("b1")
        assert runs.order == ["a1", "b1", "c1"]  # alice is still at her share
        await runs.start("b2", bob)
        assert runs.told["b2"] == [0]
        for name in ("a1", "c1", "a2", "b2"):
            await runs.finish(name)
        assert runs.order == ["a1", "b1", "c1", "a2", "b2"]


async def test_a_newcomer_never_passes_its_own_clients_waiters() -> None:
    admission = Admission(slots=1, queue=10)
    async with anyio.create_task_group() as group:
        runs = Runs(admission, group)
        for name in "abc":
            await runs.start(name, ONE)
        await runs.finish("a")  # the slot goes to b, the first in line
        await runs.start("d", ONE)
        assert runs.order == ["a", "b"]
        for name in "bcd":
            await runs.finish(name)
        assert runs.order == list("abcd")


async def test_a_cancelled_waiter_leaves_the_line_and_the_rest_move_up() -> None:
    admission = Admission(slots=1, queue=10)
    async with anyio.create_task_group() as group:
        runs = Runs(admission, group)
        for name in "abcd":
            await runs.start(name, ONE)
        await runs.cancel("b")
        assert admission.queued == 2
        assert runs.told["c"] == [1, 0]
        assert runs.told["d"] == [2, 1]
        await runs.finish("a")
        assert runs.order == ["a", "c"]
        await runs.cancel("c")  # a running one: its slot passes on
        assert runs.order == ["a", "c", "d"]
        await runs.finish("d")
    assert (admission.running, admission.queued) == (0, 0)


async def test_a_waiter_cancelled_as_its_turn_came_passes_the_slot_on() -> None:
    admission = Admission(slots=1, queue=10)
    async with anyio.create_task_group() as group:
        runs = Runs(admission, group)
        for name in "abc":
            await runs.start(name, ONE)
        runs._release["a"].set()
        runs._scopes["b"].cancel()  # before b's task runs again: granted and cancelled at once
        await anyio.wait_all_tasks_blocked()
        assert runs.order == ["a", "c"]
        await runs.finish("c")
    assert (admission.running, admission.queued) == (0, 0)
