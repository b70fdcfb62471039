"""The background steps: replay the outbox, run due leaves, heartbeat, sweep, reconcile.

Each is a public method of the facades too (tests and operators call them directly
instead of waiting for the background). A step's failure is logged by
:meth:`AsyncBackgroundSteps.run_background_step` and retried at the next one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from presence_kit._async.handlers import AsyncHandlers
from presence_kit._async.ports import AsyncMovesFeeds
from presence_kit._errors import StoreError
from presence_kit._kit_base import (
    BUCKETS_PER_READ,
    DUE_LEAVES_PER_STEP,
    chunks,
    local_sids,
    log_background_failure,
    logger,
)
from presence_kit._model import (
    ConnectOutcome,
    ConnectRequest,
    ConnectStatus,
    DisconnectOutcome,
    DisconnectRequest,
    UpdateOutcome,
    UpdateRequest,
)
from presence_kit._outbox import PendingOperation
from presence_kit._synchronization import AsyncStarted

__all__ = ["AsyncBackgroundSteps"]

_Batch = tuple[list[DisconnectRequest], AsyncStarted[list[DisconnectOutcome]]]
"""A sweep's removals in flight: the requests, and their started store call."""


class AsyncBackgroundSteps(AsyncHandlers):
    """The background's steps, over the handlers' store and sockets."""

    async def replay_outbox(self) -> int:
        """Make the store operations that failed, in order, and announce what they grant.

        Stops at the first failure (Redis still down) and keeps the rest; returns how
        many were made. The background calls it every step; idempotent scripts make a
        replay of an operation that had in fact run harmless.
        """
        core, replayed = self._core, 0
        while (op := core.outbox.take()) is not None:
            request = core.retargeted(op.request)  # queued before a fence: ours now
            outcome: ConnectOutcome | DisconnectOutcome | UpdateOutcome
            try:
                if isinstance(request, ConnectRequest):
                    outcome = await self._store.connect(request)
                elif isinstance(request, UpdateRequest):
                    if self._updater is None:  # (it refused to queue one without)
                        raise TypeError("the store cannot update connections")
                    outcome = await self._updater.update(request)
                else:
                    outcome = await self._store.disconnect(request)
            except BaseException:
                core.outbox.put_back()  # a failure stops the replay; the order is kept
                raise
            core.outbox.done()
            replayed += 1
            await self._run_effects(core.replayed_effects(op, outcome))
        return replayed

    async def run_due_leaves(self, limit: int = DUE_LEAVES_PER_STEP) -> int:
        """One step of the grace scheduler: run the held-back leaves that are due.

        Any kit may run any node's leaves; each runs exactly once. Returns how many this
        call announced. The background does this every ``leave_poll_interval``; tests
        call it directly instead of sleeping.
        """
        core, announced = self._core, 0
        members = await self._store.due_leaves(core.keys.leave_queue(), limit)
        for member in members:
            request = core.finish_request(member)
            if request is None:
                continue
            finished = await self._store.finish_leave(request)
            if finished.outcome is not None:
                announced += 1
            await self._run_effects(core.finished_leave_effects(finished))
        return announced

    async def heartbeat(self) -> bool:
        """Stamp this node alive (the background does it every ``heartbeat_interval``).

        Returns ``False`` when this node had been presumed dead and swept (it stalled,
        or lost Redis for longer than ``node_timeout``): it then takes a new incarnation
        and registers the sockets it still serves again.
        """
        core, live = self._core, self._core.liveness
        try:
            ok = await self._store.heartbeat(core.heartbeat_call(first=not live.registered))
        except Exception:
            live.failed()
            raise
        live.answered(time.monotonic(), core.settings.node_timeout)
        live.registered = True
        if not ok:
            await self._register_again()
        await self._hand_over_former()
        return bool(ok)

    async def _hand_over_former(self) -> None:
        """Register this kit's former incarnations as dead nodes, so that a sweeper (any
        node's) clears what they wrote after their sweep: a sweep removes only records
        that incarnation still owns (those not moved here), and then deletes its index.
        Nothing is left behind even if this node dies before it could clear them."""
        core = self._core
        dead_ms = -2 * core.node_timeout_ms  # claimable at once
        while core.former_members:
            member = core.former_members[0]
            beat = core.heartbeat_call(first=True, offset_ms=dead_ms, member=member)
            await self._store.heartbeat(beat)
            core.former_members.pop(0)

    async def _register_again(self) -> None:
        core = self._core
        core.count("fenced")
        logger.warning("this node was presumed dead and swept; registering its sockets again")
        core.new_incarnation()
        core.liveness.registered = False
        await self.heartbeat()
        live = local_sids(self._sockets)
        for sid, session in list(core.local_sessions.items()):
            if live is None or sid in live:
                # A record its former incarnation wrote moves here (connect.lua).
                await self.handle_connect(sid, session)

    async def sweep_dead_nodes(self) -> int:
        """Claim dead nodes and run the leave of each of their connections, exactly once.

        Returns how many connections this call recovered. The background calls it every
        ``heartbeat_interval``, but only while Redis has answered this node continuously
        for longer than ``node_timeout``; a direct call (an operator's) sweeps at once.
        """
        core, store = self._core, self._store
        recovered = await self._recover(core.take_unconfirmed())
        keys, timeout_ms, ttl_ms = core.keys, core.node_timeout_ms, core.node_timeout_ms
        while True:
            member = await store.claim_node(keys, timeout_ms, ttl_ms)
            if member is None:
                return recovered
            started = time.perf_counter()
            for buckets in chunks(keys.node_indexes(member), BUCKETS_PER_READ):
                entries = await store.node_connections(buckets)
                recovered += await self._sweep_entries(member, list(entries.items()))
            await store.release_node(keys, member)
            if self._metrics is not None:
                self._metrics.sweep(time.perf_counter() - started)
            logger.info("swept a lost node", extra={"presence_node": member})

    async def _sweep_entries(self, member: str, entries: Sequence[tuple[str, str]]) -> int:
        """Run the leaves of a swept node's connections, ``sweep_batch`` per round trip,
        renewing the claim after each batch. Each round trip (and renewal) is started
        before the last batch's leaves are announced and collected after: a task-based
        kit keeps Redis writing one batch while it announces the other; a thread-based
        one makes them in turn. If one fails, the batch in flight is still collected
        and its leaves announced before the failure is raised."""
        core, store, recovered = self._core, self._store, 0
        keys, ttl_ms = core.keys, core.node_timeout_ms
        in_flight: _Batch | None = None
        renewing: AsyncStarted[None] | None = None
        try:
            # The empty chunk at the end starts nothing and collects the last batch.
            for chunk in [*chunks(entries, core.settings.sweep_batch), ()]:
                requests = [core.sweep_request(member, sid, entry) for sid, entry in chunk]
                usable = [r for r in requests if r is not None]
                started = AsyncStarted(store.disconnect_many, usable) if usable else None
                done: _Batch | None = in_flight
                in_flight = None if started is None else (usable, started)
                if done is None:
                    continue
                recovered += await self._recovered(*done)
                if renewing is not None:
                    last, renewing = renewing, None
                    await last.result()
                renewing = AsyncStarted(store.renew_claim, keys, member, ttl_ms)
            if renewing is not None:
                last, renewing = renewing, None
                await last.result()
        except Exception:
            # Started and not collected yet: a batch that went through still has its
            # leaves announced (Redis forgot those connections), then the first
            # failure is raised.
            if in_flight is not None:
                with contextlib.suppress(Exception):
                    await self._recovered(*in_flight)
            if renewing is not None:
                with contextlib.suppress(Exception):
                    await renewing.result()
            raise
        return recovered

    async def move_stale_feeds(self) -> int:
        """Move presence feed entries that a kit left queued on a Redis Cluster (it died
        between a user's script and the move), at least once. The background does it
        every ``heartbeat_interval`` with the feed on; returns how many it moved."""
        if not isinstance(self._store, AsyncMovesFeeds):
            return 0
        core = self._core
        layout, older_than_ms = core.layout, core.node_timeout_ms
        return await self._store.move_stale_feeds(
            core.keys, older_than_ms, layout.feed_retention_ms
        )

    async def reconcile(self) -> int:
        """Compare this node's records with its live sockets, both ways; returns how
        many it fixed. A record with no live socket gets its leave run; a live socket
        with no record (its connect was lost, say forced out of a full outbox) is
        recorded again from the session it connected with (a teacher who was unknown
        to Redis then comes online: ``teacher_connect``).

        Needs ``local_sids()`` on the sockets port (the python-socketio adapters have it).
        """
        core = self._core
        if local_sids(self._sockets) is None:
            return 0
        confirmed = await self._recover(core.take_unconfirmed())
        entries = await self._store.node_connections(core.keys.node_indexes(core.member))
        # Read the sockets after the records: a record is written after its socket
        # joined the server, so a record whose socket is missing now really is stale.
        live = local_sids(self._sockets) or set()
        requests = [
            core.sweep_request(core.member, sid, entry, reason="stale connection")
            for sid, entry in entries.items()
            if sid not in live and sid not in core.unconfirmed
        ]
        recovered = await self._recover([r for r in requests if r is not None])
        # A live socket missing from this incarnation's index is recorded again; one
        # whose record a former incarnation wrote is moved here (connect.lua).
        repaired = await self._repair(live.difference(entries))
        return confirmed + recovered + repaired

    async def _repair(self, unrecorded: set[str]) -> int:
        """Record again the live sockets of this node that Redis does not know (their
        connect was forced out of a full outbox, or lost): from the kit's own sessions.

        The socket may disconnect while its record is written. A disconnect that landed
        first left a tombstone (the connect is refused: STALE), or found no record (then
        this step removes the record it just wrote: the handler popped the session, so
        it is seen missing here); one that lands after removes it as usual. Either way
        the connection never comes back, and its leave is announced once (the attempt
        ids tell a replayed handler call that this step made the removal)."""
        core, repaired = self._core, 0
        pending = core.outbox.sids()
        for sid in sorted(unrecorded):
            session = core.local_sessions.get(sid)
            if session is None or sid in pending:  # not ours, or the replay will make it
                continue
            sid, parsed, policy, request = core.prepare_connect(sid, session)
            try:
                outcome = await self._store.connect(request)
            except Exception:
                # It may have run (its reply lost): the replay makes it again with the
                # same attempt, and announces what it did.
                core.queue(PendingOperation("connect", sid, parsed, policy, request))
                raise
            if outcome.status is not ConnectStatus.NEW:
                continue  # recorded meanwhile (REPEAT), or disconnected meanwhile (STALE)
            repaired += 1
            await self._run_effects(core.repaired_effects(sid, parsed, policy, outcome))
            if sid not in core.local_sessions:  # it disconnected while we wrote
                undo = core.prepare_disconnect(sid, session, "stale connection").request
                removed = await self._store.disconnect(undo)
                await self._run_effects(core.recovered_effects(removed, undo.reason))
        return repaired

    async def _recover(self, requests: Sequence[DisconnectRequest]) -> int:
        """Run the removals of a sweep or reconcile (the first, those whose replies were
        lost: see :meth:`_recovered`) and announce what they recovered."""
        if not requests:
            return 0
        return await self._recovered(requests, AsyncStarted(self._store.disconnect_many, requests))

    async def _recovered(
        self,
        requests: Sequence[DisconnectRequest],
        started: AsyncStarted[list[DisconnectOutcome]],
    ) -> int:
        """Collect a started ``disconnect_many`` and announce what it recovered. If it
        failed, it may have run (its reply lost): its requests are kept, and made again
        with the same attempts until their outcomes are known."""
        core = self._core
        try:
            outcomes = await started.result()
        except Exception:
            core.keep_unconfirmed(requests)
            raise
        recovered = 0
        for request, outcome in zip(requests, outcomes, strict=True):
            removal = core.own_removal(request, outcome)
            if removal is not None:
                recovered += 1
                await self._run_effects(core.recovered_effects(removal, request.reason))
        core.count("recovered", recovered)
        return recovered

    async def run_background_step(self) -> None:
        """One pass of the background: heartbeat, replay, due leaves, sweeps and
        reconciling when due. Failures are logged, never raised."""
        core = self._core
        now, live, s = time.monotonic(), core.liveness, core.settings
        beat = now >= live.next_beat
        if beat:
            live.next_beat = now + s.heartbeat_interval
        reconcile = now >= live.next_reconcile
        if reconcile:
            live.next_reconcile = now + s.reconcile_interval
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        if beat:
            steps.append(("heartbeat", self.heartbeat))
        if len(core.outbox):
            steps.append(("replay", self.replay_outbox))
        steps.append(("due_leaves", partial(self.run_due_leaves, DUE_LEAVES_PER_STEP)))
        if beat:
            steps.append(("sweep", self._sweep_if_safe))
            if s.feed and isinstance(self._store, AsyncMovesFeeds):
                steps.append(("feed", self.move_stale_feeds))
        if reconcile:
            steps.append(("reconcile", self.reconcile))
        for name, step in steps:
            try:
                await step()
            except Exception as exc:
                if isinstance(exc, StoreError):
                    core.count_keyed("store_errors", (name, ""))
                log_background_failure(exc)

    async def _sweep_if_safe(self) -> int:
        # Decided after this step's heartbeat: only with Redis answering continuously.
        if not self._core.liveness.may_sweep(time.monotonic(), self.settings.node_timeout):
            return 0
        return await self.sweep_dead_nodes()

    async def _background_loop(self) -> None:
        while not self._stopping:
            await self.run_background_step()
            await self._sockets.sleep(self._tick)

    async def _hand_over(self) -> None:
        # Hand the connections over at shutdown: they are swept after shutdown_grace,
        # unless their clients reconnect elsewhere first.
        core, s = self._core, self.settings
        if not core.liveness.registered:
            return
        offset_ms = round((s.shutdown_grace - s.node_timeout) * 1000)
        try:
            await self._store.heartbeat(core.heartbeat_call(first=False, offset_ms=offset_ms))
        except Exception as exc:
            log_background_failure(exc)
