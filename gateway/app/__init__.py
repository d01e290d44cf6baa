"""The composition root: CLI and role wiring; the only place that imports ``workers``."""
