"""nnc-fl quickstart: a compressed Flower app (BatchNorm CNN, scikit-learn digits, offline)."""
