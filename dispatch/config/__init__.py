"""Settings: the option machinery the server and the engine share (``options``),
and the server's own (``settings``)."""
