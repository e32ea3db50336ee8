"""Client side of nnc-fl: the ``nnc_mod`` Flower client mod."""

from .mod import nnc_mod

__all__ = ["nnc_mod"]
