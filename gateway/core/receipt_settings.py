"""Delivery receipts' settings (``RECEIPTS_*``): off unless a status URL can exist.

A module of its own beside ``gateway.core.settings`` (which was at its size limit); the
same ``.env`` and environment rules as the classes there. ``Config.receipts`` holds one.
"""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from gateway.core.settings_base import _Base, _split
from gateway.core.status_urls import StatusUrls, url_problem


class ReceiptSettings(_Base):
    """Where each reply's delivery receipt goes, and how long it is retried.

    Receipts are on when ``RECEIPTS_URL`` is set or ``RECEIPTS_STATUS_URL_HOSTS`` lets a
    reply name its own ``status_url``; with both empty no receipt is made, and the
    ``receipts`` consumer group is never created."""

    receipts_url: str | None = None
    receipts_status_url_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # A receipt the status URL does not take (5xx, 408, 429, timeout, network) is retried
    # with backoff this long from its first try, then dead-lettered (receipt_undelivered).
    receipts_retry_seconds: float = Field(default=600.0, ge=0, le=7 * 86_400)
    receipts_timeout: float = Field(default=10.0, gt=0, le=300)
    receipts_max_in_flight: int = Field(default=256, ge=1, le=10_000)

    @field_validator("receipts_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if not value:
            return None
        problem = url_problem(value)
        if problem is not None:
            raise ValueError(f"the status URL {problem}")
        return value

    @field_validator("receipts_status_url_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("receipts_status_url_hosts")
    @classmethod
    def _hosts_shape(cls, value: list[str]) -> list[str]:
        StatusUrls.parse(value)  # ValueError naming the bad entry
        return value

    @cached_property
    def status_urls(self) -> StatusUrls:
        """The allow-list of per-reply status URLs (empty: every one refused)."""
        return StatusUrls.parse(self.receipts_status_url_hosts)

    @property
    def enabled(self) -> bool:
        """Can any reply have a receipt (a default URL, or per-reply URLs allowed)?"""
        return self.receipts_url is not None or bool(self.status_urls)
