"""engine.bench pipeline: the run order that cancels a host's linear drift."""
from __future__ import annotations

from engine.bench.pipeline import run_order


def test_abba_order_gives_both_split_variants_the_same_mean_position():
    """A throughput that drifts linearly with time would shift the sync/async ratio if one variant always ran
    first; in ABBA order their mean positions are equal for an even number of repeats."""
    for repeats in (2, 4):
        order = run_order(repeats)
        position = {v: [i for i, (name, _) in enumerate(order) if name == v] for v in ("split_sync", "periodic_async")}
        assert len(position["split_sync"]) == len(position["periodic_async"]) == repeats
        assert sum(position["split_sync"]) == sum(position["periodic_async"])
        assert order[-1] == ("colocated_sync", 0)
        assert len(set(order)) == len(order)  # every (variant, repeat) is its own run directory
