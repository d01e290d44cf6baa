"""tg-gateway workers: update consumer, sender and the reference pipeline."""
