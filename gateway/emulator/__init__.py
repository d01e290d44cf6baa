"""A Telegram Bot API emulator: real wire format, user-side controls, faults and rate limits."""

from gateway.emulator.emulator import Emulator, run_emulator
from gateway.emulator.faults import Faults
from gateway.emulator.limits import EmulatorLimits

__all__ = ["Emulator", "EmulatorLimits", "Faults", "run_emulator"]
