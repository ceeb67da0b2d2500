"""Watching a key prefix through faults: the raw stream, the resilient engine, the shared hub."""
