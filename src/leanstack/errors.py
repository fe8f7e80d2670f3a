"""The one error type the CLI turns into a one-line message instead of a traceback."""


class LeanstackError(Exception):
    """A problem the user can fix; the message names the problem and the fix, on one line."""
