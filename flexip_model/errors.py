"""The one user-facing exception type of FlexIP, and how a value read from a file appears in its message."""


class FlexIPError(ValueError):
    """A problem the user can fix; the message is one sentence: what, where, how to fix."""


def shown(value: object, limit: int = 40) -> str:
    """repr of a value read from a file, cut to `limit` characters so an error stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
