"""Running nodes: primary, secondary and filter processes, built from config objects."""
