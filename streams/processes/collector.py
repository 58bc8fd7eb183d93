"""How a worker process uses CPython's cyclic garbage collector: one place, no setting.

A worker holds its timeline state (up to a million tasks, millions of objects) for its whole
life, and handles batches of up to 2,000 records whose decoded events and outputs all live
until the batch ends. Under CPython's defaults (a young collection per 700 net
allocations) each batch crosses the young threshold dozens of times, its live objects are
promoted, and the promotions bring on full collections, each of which walks the whole state
(2.6 s of CPU at a million tasks), while the state holds no reference cycle to find
(tests/unit/test_collector.py): it is freed by reference counting alone.

So the worker (docs/performance.md, "Stop 16"):

- ``configure`` at start: a young collection per ``YOUNG_THRESHOLD`` net allocations, above
  what a batch allocates and frees, so a batch's objects die by reference counting before
  any collection sees them; the modules and models loaded so far are frozen (moved out of
  the collector's view: they live as long as the process).
- ``settle`` after each partition's restore: what is live then, the restored state above
  all, is frozen, so a full collection walks only what was created since. Frozen objects
  are still freed by reference counting when a revoke drops the state; only a reference
  cycle among them would outlive it (a few in-flight objects at most: the restores of a
  rebalance are the only moments anything is frozen).

Cycles are still collected (exceptions with their tracebacks, asyncio's futures), just
less often: at most ``YOUNG_THRESHOLD`` objects wait in the young generation.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000
# CPython's ratios between generations: a middle collection per 10 young ones, and a full
# one considered per 10 middle ones (and run only once the old generation has grown by a
# quarter since the last, CPython's own rule).
MIDDLE_THRESHOLD = 10
OLD_THRESHOLD = 10


def configure() -> None:
    """Set the worker's thresholds and freeze what start-up loaded (call once, at start)."""
    gc.collect()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
    gc.freeze()


def settle() -> None:
    """Freeze what is live now: call after a partition's state has been restored."""
    # The young generations hold the restore's short-lived leftovers: collecting them
    # (not the old one, which would walk the whole heap) keeps their cycles out of the
    # frozen set.
    gc.collect(1)
    gc.freeze()
