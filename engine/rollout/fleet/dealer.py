"""The dealer: which engine of the fleet generates which of the iteration's prompts.

Dealing is dynamic: an engine is handed prompts while it has fewer than its window in flight (its own batch
capacity, or the periodic_async wave size), one more each time one of its groups finishes. A long-tail engine
is not handed more, so the iteration ends when the last group ends, not when the slowest engine's fixed share
does. An engine that dies gives its unfinished prompts back (`reclaim`); they go first to whichever engine has
room next, with the same per-prompt seeds, so they come out as the dead engine would have made them.

    waiting:  [p5 p6 p7 ...]          (reclaimed prompts go back to the front)
    engine a: in flight {p0, p2}      window 2
    engine b: in flight {p1, p3, p4}  window 3
    the call ends when every prompt's group has arrived (Fleet counts them)

Thread-safe: the fleet's reader threads deal (a group arrived, a worker died) while the controller waits.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Hashable, Sequence

from engine.types import PromptItem

Member = Hashable


def share_window(prompts: int, engines: int, capacity: int) -> int:
    """Prompts one engine may have in flight so that every engine gets work: min(capacity, ceil(prompts /
    engines)), at least 1. Dealing fills each engine to its window in turn, so a window of `prompts` would hand
    the first engine everything and leave the others idle."""
    return max(1, min(capacity, -(-prompts // engines)))


class Dealer:
    def __init__(self, prompts: Sequence[PromptItem]) -> None:
        self._waiting: deque[PromptItem] = deque(prompts)
        self._in_flight: dict[Member, dict[int, PromptItem]] = {}
        self.lock = threading.RLock()

    def take(self, member: Member, window: int) -> list[PromptItem]:
        """Prompts for `member` until it has `window` in flight (none when nothing waits)."""
        with self.lock:
            mine = self._in_flight.setdefault(member, {})
            out = []
            while self._waiting and len(mine) < window:
                item = self._waiting.popleft()
                mine[item.index] = item
                out.append(item)
            return out

    def in_flight(self, member: Member) -> int:
        """Prompts dealt to `member` whose groups have not arrived."""
        with self.lock:
            return len(self._in_flight.get(member, {}))

    @property
    def waiting(self) -> int:
        """Prompts not dealt yet."""
        with self.lock:
            return len(self._waiting)

    @property
    def open(self) -> int:
        """Prompts whose groups have not been delivered: waiting or in flight anywhere."""
        with self.lock:
            return len(self._waiting) + sum(len(mine) for mine in self._in_flight.values())

    def done(self, member: Member, index: int) -> None:
        """`member` delivered the group of prompt `index`."""
        with self.lock:
            self._in_flight.get(member, {}).pop(index)

    def reclaim(self, member: Member) -> list[PromptItem]:
        """`member` is gone: its unfinished prompts wait again, first in line, and are returned."""
        with self.lock:
            lost = list(self._in_flight.pop(member, {}).values())
            self._waiting.extendleft(reversed(lost))
            return lost
