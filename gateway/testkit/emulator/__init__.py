"""A Telegram Bot API emulator: real wire format, user-side controls, faults and rate limits."""

from gateway.testkit.emulator.emulator import Emulator, run_emulator
from gateway.testkit.emulator.faults import Faults
from gateway.testkit.emulator.limits import EmulatorLimits

__all__ = ["Emulator", "EmulatorLimits", "Faults", "run_emulator"]
