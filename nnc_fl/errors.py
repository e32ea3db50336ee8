"""The one exception type of the bitstream layer."""


class FormatError(ValueError):
    """A stream is malformed, truncated, corrupted, of an unsupported version or over a limit.

    Every decoding path raises this (and only this) for bad input; ``str(exc)`` names the reason.
    """


class LimitError(FormatError):
    """A stream declares more (bytes, tensors, elements, rank) than the decoder's limits allow."""


class SchemaError(FormatError):
    """A well-formed stream whose tensor table is not the one the caller expected (names, shapes,
    dtypes); raised before any payload is decoded."""


class TemporalReferenceError(FormatError):
    """A stream coded with temporal contexts (tools bit 5) decoded without its temporal reference, or
    with another one (the digests differ); raised before any payload is decoded."""
