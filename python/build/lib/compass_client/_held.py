"""Outcomes that arrived for batches no caller of this client awaits (resume after a crash)."""

from __future__ import annotations

import threading
from typing import Any, Optional

from .types import BatchOutcome


class HeldResults:
    """Outcomes no caller of this client awaits (a previous client of the session submitted them).

    They are not ACKed until taken (collect, or a SUBMIT of the same id), so a producer that
    crashes again before taking them still finds them at the broker. Shared between threads.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.outcomes: dict[str, BatchOutcome] = {}
        self.welcome: Optional[dict[str, Any]] = None
        #: RESULT/FAILED messages still to come of those the last WELCOME announced.
        self.replays_left = 0
        self.closed = False

    def put(self, outcome: BatchOutcome) -> None:
        with self.cond:
            self.outcomes[outcome.batch_id] = outcome
            self.cond.notify_all()

    def take(self, batch_id: str) -> Optional[BatchOutcome]:
        with self.cond:
            return self.outcomes.pop(batch_id, None)

    def note_welcome(self, info: dict[str, Any]) -> None:
        with self.cond:
            self.welcome = info
            self.replays_left = int(info.get("pending_results") or 0)
            self.cond.notify_all()

    def note_delivery(self) -> None:
        """A RESULT or FAILED arrived: the broker sends the replays right after WELCOME."""
        with self.cond:
            if self.replays_left > 0:
                self.replays_left -= 1
                if self.replays_left == 0:
                    self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
