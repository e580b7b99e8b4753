"""Kernel backends of the buffer filters, chosen by name (see registry)."""
