"""Checkpoint converters: the one place that knows foreign checkpoint formats.

Every converter reads a user-supplied checkpoint without executing anything from it
(see `convert.safe_pickle`) and writes a stylejax checkpoint (orbax params + config.json,
see `stylejax.io.checkpoint`).
"""

from stylejax.errors import UserError


class ConversionError(UserError):
    """A problem with the user's input; the CLI prints it as one line, no traceback."""
