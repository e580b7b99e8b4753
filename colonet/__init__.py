"""colonet: output commit on the network for checkpoint-replicated guests."""

__version__ = "0.1.0"
