"""The one user-facing exception type of FlexIP."""


class FlexIPError(ValueError):
    """A problem the user can fix; the message is one sentence: what, where, how to fix."""
