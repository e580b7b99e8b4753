"""The guest interface and its implementations (the embedded guest)."""
