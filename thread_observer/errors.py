"""The one error a command reports as a single line on stderr, with exit status 2."""


class UsageError(Exception):
    """Bad input or an environment that cannot do what was asked: the message says what."""
