"""``distconv``: the command-line client for people with video files (submit, watch,
download) and for looking at the farm. Modules import httpx and rich inside the
functions that use them, so ``distconv --version`` starts in a few tens of ms."""
