"""The package's logger: `logging.getLogger("bsm_ray.<module>")` everywhere in library code.

By default the `bsm_ray` logger writes INFO and above to standard output as today's lines,
`[bsm_ray] <message>`, so jobs, Ray workers and the tests that read a job's output see what
they always saw. The handler looks up `sys.stdout` at each record (pytest and Ray replace it).
An application that configures logging itself can drop the default: `configure(None)`, or
replace the handlers of `logging.getLogger("bsm_ray")`. `BSM_RAY_LOG_LEVEL` sets the level.

Leaf module: standard library only.
"""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "[bsm_ray] %(message)s"


class StdoutHandler(logging.StreamHandler):
    """A StreamHandler on whatever `sys.stdout` is when the record is emitted."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; stdout is looked up
        pass


def configure(handler: logging.Handler | None = StdoutHandler) -> logging.Logger:
    """The `bsm_ray` logger with `handler` (a class or instance; None: no handler, records
    propagate to the root logger) at `BSM_RAY_LOG_LEVEL` (default INFO)."""
    global _configured
    _configured = True
    logger = logging.getLogger("bsm_ray")
    for h in list(logger.handlers):
        if isinstance(h, StdoutHandler):
            logger.removeHandler(h)
    if handler is None:
        logger.propagate = True
        return logger
    h = handler() if isinstance(handler, type) else handler
    h.setFormatter(logging.Formatter(FORMAT))
    logger.addHandler(h)
    logger.setLevel(os.environ.get("BSM_RAY_LOG_LEVEL", "INFO").upper())
    logger.propagate = False  # one line per record, not a second copy through the root
    return logger


_configured = False


def get_logger(name: str) -> logging.Logger:
    """`logging.getLogger(name)`, installing the package default on first use (unless the
    application configured the `bsm_ray` logger first)."""
    global _configured
    if not _configured:
        _configured = True
        if not logging.getLogger("bsm_ray").handlers:
            configure()
    return logging.getLogger(name)
