"""The Telegram edge: the Bot API client the ingress and start-up use."""
