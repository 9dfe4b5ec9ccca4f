"""The console: every line the engine prints while it runs goes through the `cadence` logger.

Its handler writes with `tqdm.write`, so a line lands above a live progress bar instead of through it. Like
`transformers`, the library sets up its own logger once (`enable`, called by the entry points and by RunLog):
INFO and above to stderr, not propagated to the root logger (a program that configures logging itself would
print every line twice). To route the lines elsewhere: `logging.getLogger("cadence").handlers = [...]`, or set
`propagate = True` and remove the handler.
"""
from __future__ import annotations

import logging
import sys

LOGGER_NAME = "cadence"
log = logging.getLogger(LOGGER_NAME)


class TqdmHandler(logging.Handler):
    """Writes records to stderr (the one current at the time of the call) through `tqdm.write`."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
            tqdm.write(f"[cadence] {level}{self.format(record)}", file=sys.stderr)
        except Exception:  # logging's contract: a handler never raises into the caller
            self.handleError(record)


def enable(level: int = logging.INFO) -> logging.Logger:
    """Give the `cadence` logger its console handler, once per process (a handler set by the user is kept)."""
    if not log.handlers:
        log.addHandler(TqdmHandler())
        log.setLevel(level)
        log.propagate = False
    return log
