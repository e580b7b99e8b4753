"""Epoch bookkeeping and the filters that hold guest output until commit."""
