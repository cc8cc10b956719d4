"""User-facing errors.

Every error a user can cause (bad input, bad config, missing sample data) is a `BsmRayError`
whose message is one line naming the file, the record and the reason. Jobs catch `BsmRayError`
at the top and print that line instead of a traceback; anything else is a bug and keeps its
traceback.

Pure module: imports nothing from the project or third parties.
"""

from __future__ import annotations


class BsmRayError(Exception):
    """An error caused by the user's input or settings; its message is shown as is."""


class ConfigError(BsmRayError):
    """A config file or `--set` override is invalid (unknown key, wrong type, bad value)."""


class InputError(BsmRayError):
    """An input file or one of its records is invalid.

    Carries the pieces of the message separately so callers can count skips per reason.
    """

    def __init__(self, path: str, record: str | None, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.record = record
        self.reason = reason
        self.detail = detail
        where = self.path if record is None else f"{self.path}: record {record}"
        super().__init__(f"{where}: {reason}" + (f" ({detail})" if detail else ""))

    def at(self, record: str | None) -> InputError:
        """This error naming `record` (the one being read when it happened), unless it names
        a record already or `record` is None."""
        if record is None or self.record is not None:
            return self
        return InputError(self.path, record, self.reason, self.detail)


class TrackingError(BsmRayError):
    """The tracking server could not be reached and `tracking.strict` is set."""


class SampleDataUnavailable(BsmRayError):
    """The embedded sample corpus could not be built (package registry unreachable)."""
