"""The one error type a user is meant to read.

:class:`ZooError` marks a problem with what the user gave zoo (a config value, a file, a flag, the machine's set-up)
that the user can fix. Its message is one sentence naming the field, the value and the fix. Every command prints
it (and ``ValueError``, the convention for bad arguments throughout the library) as one line on stderr and exits
with status 2; ``--verbose`` or ``ZOO_TRACEBACK=1`` prints the traceback too.
"""

from __future__ import annotations


class ZooError(Exception):
    """A user-fixable problem; the message names the field, the value and the fix in one sentence."""
