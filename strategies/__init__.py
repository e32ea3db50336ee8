"""Server side of nnc-fl: ``CompressedStrategy`` wraps any Flower strategy."""

from .bandwidth import FIELDS as BANDWIDTH_FIELDS
from .compressed import CompressedStrategy
from .settings import CodecSettings, DownlinkSettings, ValidationSettings

__all__ = ["BANDWIDTH_FIELDS", "CodecSettings", "CompressedStrategy", "DownlinkSettings", "ValidationSettings"]
