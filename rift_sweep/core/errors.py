"""The project's own error type. The command line turns it into one line and exit 2; anything else is a bug
and keeps its traceback."""


class InputError(ValueError):
    """Input a user can fix (a config field, a checkpoint, a data folder, a module name): the message names the
    problem and the fix in one line; details, if any, go in `details` (shown with --verbose)."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class DataNotFound(InputError, FileNotFoundError):
    """A dataset's files are not where the config says."""
