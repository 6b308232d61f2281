"""User-facing errors, and the one way a run stops that is not an error.

Everything a user can get wrong (a path, a name, a hyper-parameter, a file from elsewhere) raises a
`UserError` whose message is one line that names the fix. The CLI prints it without a traceback and
exits with status 2; the app shows it on the page.
"""


class UserError(Exception):
    """A mistake in the user's input, with a message that says how to fix it."""


class DataError(UserError):
    """A dataset that cannot be found, read or split."""


class BackboneError(UserError):
    """A backbone name, architecture or weights file that cannot be used."""


class ConfigError(UserError, ValueError):
    """An impossible hyper-parameter or combination of them; `setting` names the field when there is one,
    so the app can say it in the form's words."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class RunDirError(UserError):
    """A run directory that is missing, locked, corrupt, or already holds a finished run."""


class NumericsError(UserError):
    """The loss became NaN or infinite."""


class Cancelled(BaseException):
    """The user asked the run to stop (Cancel button, SIGTERM, Ctrl-C): not an error, so not a `UserError`.

    A `BaseException`, like `KeyboardInterrupt`: SIGTERM raises it wherever the run is (loading data,
    scoring, evaluating), and no `except Exception` on the way (ours, torch's, PIL's) may swallow it.
    """
