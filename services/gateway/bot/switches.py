"""Roll-out switches: "true"/"false", or a percentage ("25%") chosen stably per user.

A percentage puts each user in a bucket from a hash of the switch name, the business id and the
user id, so the same user always gets the same side (no flipping between messages, workers or
restarts), and two switches at 25% are independent of each other.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_TRUE = {"true", "on", "yes", "1"}
_FALSE = {"false", "off", "no", "0"}
_PERCENT = re.compile(r"^\s*(\d{1,3}(?:\.\d+)?)\s*%\s*$")
_BUCKETS = 10_000


@dataclass(frozen=True)
class Switch:
    name: str
    percent: float  # 0 to 100; 100 = on for everyone

    @classmethod
    def parse(cls, name: str, value: str) -> Switch:
        text = value.strip().lower()
        if text in _TRUE:
            return cls(name, 100.0)
        if text in _FALSE:
            return cls(name, 0.0)
        match = _PERCENT.match(text)
        if match and 0.0 <= float(match.group(1)) <= 100.0:
            return cls(name, float(match.group(1)))
        raise ValueError(f"expected true, false or a percentage like 25%, got {value!r}")

    def enabled_for(self, business_id: str, user_id: str) -> bool:
        if self.percent >= 100.0:
            return True
        if self.percent <= 0.0:
            return False
        return bucket(self.name, business_id, user_id) < self.percent * (_BUCKETS / 100)

    def describe(self) -> str:
        if self.percent >= 100.0:
            return "on"
        if self.percent <= 0.0:
            return "off"
        return f"{self.percent:g}%"


def bucket(name: str, business_id: str, user_id: str) -> int:
    """A stable bucket in [0, 10000) for this switch, business and user."""
    digest = hashlib.sha256(f"{name}\x00{business_id}\x00{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % _BUCKETS
