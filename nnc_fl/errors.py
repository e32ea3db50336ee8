"""The one exception type of the bitstream layer."""


class FormatError(ValueError):
    """A stream is malformed, truncated, corrupted, of an unsupported version or over a limit.

    Every decoding path raises this (and only this) for bad input; ``str(exc)`` names the reason.
    """
