"""The Telegram edge: the raw Bot API client (ingress, start-up) and the one table
(``answers``) that decides what every role does with a failed Bot API call."""
