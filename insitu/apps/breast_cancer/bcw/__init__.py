"""Breast Cancer Wisconsin: a federated MLP as a standard Flower app (see ``task``)."""
