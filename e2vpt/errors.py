"""User-facing errors.

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
    """An impossible hyper-parameter or combination of them."""


class RunDirError(UserError):
    """A run directory that is missing, locked, corrupt, or already holds a finished run."""
