"""Runs that wait for a pool slot sleep instead of spinning (a fix of Dagster 1.13's executors).

A step of a pool whose slots are all taken (our `gpu` and `lancedb` pools have one each) waits for a
claim. In Dagster 1.13.27 that wait never sleeps: `InstanceConcurrencyContext.
interval_to_next_pending_claim_check` returns `min([0, ...])`, never more than 0, so the in-process
executor's `sleep_til_ready` sleeps 0 s, and the multiprocess executor's loop has no sleep at all when
every remaining step waits for a slot (Dagster PR 20367 describes the first). A backfill of raw data,
embeddings and table rows starts 4 runs; 3 of them reach `embeddings` while the first holds the `gpu`
slot, and each spins a CPU core until it gets it: on a 2-core machine the one embedding step then runs
at less than half its speed.

`apply()` (called where the code location is defined, so every run worker has it) makes the interval
the time to the next claim check, as intended, and makes the executors sleep that long (at most
`MAX_SLEEP_S`, so termination stays prompt) when nothing is in flight and steps wait for slots.
Claims are still checked at Dagster's own intervals; only the idle spinning between them goes.
`tests/tessera_assets/test_pool_wait.py` checks the upstream behaviour is still as described (so the
fix is dropped when Dagster fixes it) and that a waiting run stays idle."""

from __future__ import annotations

import functools
import time

from dagster._core.execution.plan.active import ActiveExecution
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext

MAX_SLEEP_S = 1.0
MIN_SLEEP_S = 0.05


def _interval_to_next_claim_check(self: InstanceConcurrencyContext) -> float:
    """Seconds until the earliest pending claim is due to be checked again (0 when one is due)."""
    if not self._pending_claims or not self._pending_timeouts:
        return 0.0
    return max(0.0, min(self._pending_timeouts.values()) - time.time())


def _sleeping_while_only_waiting(get_steps_to_execute):
    @functools.wraps(get_steps_to_execute)
    def wrapper(self: ActiveExecution, limit: int | None = None):
        steps = get_steps_to_execute(self, limit)
        context = self._instance_concurrency_context
        if not steps and not self._in_flight and context is not None and context.has_pending_claims():
            time.sleep(min(MAX_SLEEP_S, max(MIN_SLEEP_S, context.interval_to_next_pending_claim_check())))
        return steps

    wrapper._tessera_pool_wait = True
    return wrapper


def apply() -> None:
    """Install the fix once per process (idempotent)."""
    if getattr(ActiveExecution.get_steps_to_execute, "_tessera_pool_wait", False):
        return
    InstanceConcurrencyContext.interval_to_next_pending_claim_check = _interval_to_next_claim_check
    ActiveExecution.get_steps_to_execute = _sleeping_while_only_waiting(ActiveExecution.get_steps_to_execute)
