"""The one error a command reports as a single line on stderr, with exit status 2."""


class UsageError(Exception):
    """Bad input or an environment that cannot do what was asked: the message says what."""


def require_rich(command: str) -> None:
    """``top`` and ``demo`` draw with rich, an extra: the daemon runs without it."""
    try:
        import rich  # noqa: F401
    except ImportError:
        raise UsageError(
            f"thread-observer {command} draws with rich, which is not installed: "
            "pip install 'thread-observer[top]'"
        ) from None
