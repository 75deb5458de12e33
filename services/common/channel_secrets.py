"""What a channel secret (access token, Twilio SID or auth token, app secret) may be.

The business service checks it where it stores one; the admin API checks every secret of a
``PUT .../token`` before it writes the first, each being a write of its own, so that a refused
one leaves the others unwritten. One rule here, so the two cannot drift apart.
"""

from __future__ import annotations

MAX_SECRET = 4096


def secret_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as a secret (never quoting it), or None."""
    if len(value) > MAX_SECRET:
        return f"at most {MAX_SECRET} characters"
    if value != value.strip() or any(ord(c) < 32 for c in value):
        return "must not contain whitespace at the ends or control characters"
    return None
