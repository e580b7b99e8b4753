"""Network namespace, link and capability helpers (pyroute2)."""
