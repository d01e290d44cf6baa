"""Tools for testers: the Bot API emulator, the reference pipeline, port reservations."""
