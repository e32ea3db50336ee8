"""Client side of nnc-fl: the ``nnc_mod`` Flower client mod."""

from .mod import make_nnc_mod, nnc_mod

__all__ = ["make_nnc_mod", "nnc_mod"]
