"""The base of every error idxr-pg reports to a user as a message rather than a traceback."""


class IdxrError(Exception):
    """An error whose message is complete for a user: it names what is wrong and how to fix it."""
