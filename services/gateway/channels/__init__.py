"""Webhook formats: one module per channel (parsing and signature checks)."""

from __future__ import annotations

# What the session service accepts (parley.session.v1: ids 1-128 printable characters, provider
# message ids at most 256): anything else is refused at the webhook, never queued to fail later.
MAX_USER_ID = 128
MAX_PROVIDER_MESSAGE_ID = 256


def check_ids(user_id: str, provider_message_id: str) -> None:
    """ValueError (an unusable message) unless both ids can be stored with the conversation."""
    if not user_id or len(user_id) > MAX_USER_ID or not user_id.isprintable():
        raise ValueError(f"sender must be 1-{MAX_USER_ID} printable characters")
    if (
        not provider_message_id
        or len(provider_message_id) > MAX_PROVIDER_MESSAGE_ID
        or not provider_message_id.isprintable()
    ):
        raise ValueError(f"message id must be 1-{MAX_PROVIDER_MESSAGE_ID} printable characters")
