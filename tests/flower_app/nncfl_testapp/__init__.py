"""A tiny numpy-only Flower app used by nnc-fl's simulation and deployment tests."""
