"""tg-gateway workers: update consumer, sender and the reference pipeline."""

from workers.lazy_aiogram import import_aiogram

import_aiogram()  # before any submodule imports aiogram: ~100 MB less per process
