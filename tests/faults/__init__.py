"""Fault tests: every role as its own process, faults injected while traffic flows."""
