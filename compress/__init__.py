"""Training-side stages: each reads data (and an artifact) and writes a new artifact."""
