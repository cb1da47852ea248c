"""The one error type users see: a message that names the file, line or option
and the way out. The CLI prints it on one line and exits with status 2."""


class DyagError(Exception):
    """A user-facing error (bad input, missing model, refused overwrite...)."""
