"""The end-to-end demo: namespaces, a protected guest, a kill, a client that checks."""
