"""The reference pipeline: rule-based replies, in-process or as an HTTP service."""
