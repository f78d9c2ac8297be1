"""Backends that hold the state: each in its own package (``journal``: the embedded
write-ahead journal with snapshots, the first one)."""
