"""Server side of nnc-fl: ``CompressedStrategy`` wraps any Flower strategy."""

try:
    import flwr  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "the server wrapper (strategies) needs Flower: install the 'flower' extra, e.g. pip install 'nnc-fl[flower]'"
    ) from exc


from .bandwidth import FIELDS as BANDWIDTH_FIELDS
from .compressed import CompressedStrategy
from .settings import BudgetSchedule, CodecSettings, DownlinkSettings, ValidationSettings

__all__ = [
    "BANDWIDTH_FIELDS",
    "BudgetSchedule",
    "CodecSettings",
    "CompressedStrategy",
    "DownlinkSettings",
    "ValidationSettings",
]
