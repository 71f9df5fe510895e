"""One exception base for everything a user can cause.

CLIs catch `UserError` and print it as one line `error: ...` with exit status 2; anything else is a bug
and keeps its traceback. Subclasses only say which part of the pipeline refused the input.
"""


class UserError(Exception):
    """Bad input, a missing or mismatched file, an impossible option: the message says what to do."""


class PipelineError(UserError):
    """A work directory, setting or network combination the encoder cannot use."""
