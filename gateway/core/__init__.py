"""The shared core: stream contracts, settings, errors, tokens, reply shapes; no I/O."""
