"""The operators' web dashboard under /ui/ (see views)."""
