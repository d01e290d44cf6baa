"""tg-gateway: Telegram channel gateway."""
