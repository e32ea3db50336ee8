"""Client side of nnc-fl: the ``nnc_mod`` Flower client mod."""

try:
    import flwr  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "the client mod (clients) needs Flower: install the 'flower' extra, e.g. pip install 'nnc-fl[flower]'"
    ) from exc


from .mod import make_nnc_mod, nnc_mod

__all__ = ["make_nnc_mod", "nnc_mod"]
