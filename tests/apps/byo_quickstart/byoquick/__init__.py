"""byoquick: A Flower / PyTorch app."""
