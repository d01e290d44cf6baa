"""The sender role: outbound entries -> rate-limited Bot API calls."""
