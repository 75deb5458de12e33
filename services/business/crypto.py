"""Channel secrets at rest: AES-256-GCM with keys derived from ENCRYPTION_SECRET by HKDF.

A stored secret is one ASCII string, ``enc:v1:<key id>:<base64url(nonce | ciphertext | tag)>``.
The key id names the secret it was made with, so values written under an older
``ENCRYPTION_SECRET`` (listed in ``ENCRYPTION_SECRET_PREVIOUS``) still decrypt, and the rotation
command can tell which values to re-encrypt. The associated data binds each ciphertext to its
business id and field, so a value copied into another business or field fails to decrypt.

Nothing here puts a plaintext or a secret into an exception message or a repr.
"""

from __future__ import annotations

import base64
import hmac
import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PREFIX = "enc:v1:"
NONCE_BYTES = 12
MIN_SECRET_LENGTH = 16
# Fixed salt and info labels: the key only ever depends on the secret, so every replica and the
# CLI derive the same key from the same ENCRYPTION_SECRET.
_SALT = b"parley.business.v1/token-encryption"
_KEY_INFO = b"aes-256-gcm key"
_KEY_ID_INFO = b"key id"
_FINGERPRINT_INFO = b"request fingerprint"


class CryptoError(Exception):
    """A value could not be decrypted; the message never carries the value or a key."""


def _derive(secret: str, info: bytes, length: int) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=_SALT, info=info)
    return hkdf.derive(secret.encode("utf-8"))


@dataclass(frozen=True)
class _Key:
    key_id: str
    aead: AESGCM = field(repr=False)
    mac: bytes = field(repr=False)


def _key(secret: str) -> _Key:
    # The key id is derived separately from the key, so publishing it reveals nothing about it.
    key_id = _derive(secret, _KEY_ID_INFO, 6).hex()
    return _Key(
        key_id=key_id,
        aead=AESGCM(_derive(secret, _KEY_INFO, 32)),
        mac=_derive(secret, _FINGERPRINT_INFO, 32),
    )


def _aad(business_id: str, field_name: str) -> bytes:
    return f"parley.business/{business_id}/{field_name}".encode()


def _forms(entry: str) -> list[str]:
    """A previous secret as written and with the spaces around it trimmed on either side or
    both, those long enough to be a secret."""
    forms = (entry, entry.strip(), entry.lstrip(), entry.rstrip())
    return [form for form in dict.fromkeys(forms) if len(form) >= MIN_SECRET_LENGTH]


def _joined_without_spaces(entries: list[str], at: int) -> str:
    """Entry ``at`` with its neighbours as far as the commas between them have no space
    beside them: the longest secret with commas it can be part of."""
    first = last = at
    while first > 0 and not (entries[first - 1][-1:].isspace() or entries[first][:1].isspace()):
        first -= 1
    while last + 1 < len(entries) and not (
        entries[last][-1:].isspace() or entries[last + 1][:1].isspace()
    ):
        last += 1
    return ",".join(entries[first : last + 1])


def key_id_of(stored: str) -> str:
    """The key id of a stored value (no decryption)."""
    if not stored.startswith(PREFIX):
        raise CryptoError("not an encrypted value (unknown format)")
    key_id, sep, _ = stored[len(PREFIX) :].partition(":")
    if not sep or not key_id:
        raise CryptoError("malformed encrypted value")
    return key_id


class TokenCipher:
    """Encrypts with the current key; decrypts with the current key or any previous one."""

    def __init__(self, secret: str, previous: list[str] | tuple[str, ...] = ()) -> None:
        if len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(f"ENCRYPTION_SECRET must be at least {MIN_SECRET_LENGTH} characters")
        self._current = _key(secret)
        self._keys: dict[str, _Key] = {self._current.key_id: self._current}
        for old in previous:
            if old:
                key = _key(old)
                self._keys.setdefault(key.key_id, key)

    @classmethod
    def from_settings(cls, secret: str | None, previous: str | None) -> TokenCipher:
        if not secret:
            raise ValueError("ENCRYPTION_SECRET is required (it encrypts channel tokens at rest)")
        # Each as written and with the spaces around it trimmed on either side or both:
        # ENCRYPTION_SECRET is used exactly as set, trailing newline and all, so a secret moved
        # here as it was ("new, old\n") must derive its key again, and "a, b" must find "b".
        # A form never used only adds a key that no stored value names.
        # No ENCRYPTION_SECRET was ever shorter than the minimum, so neither is a previous one:
        # a shorter entry is a secret cut short in the copy, or a new one staged (rotation,
        # step 1) that step 2 would refuse with every replica half-way through the roll.
        # A secret may hold commas itself, and moves here as it was: every run of consecutive
        # entries, joined by their commas, is tried too. A short entry is one only where no
        # comma without a space beside it joins it into a secret long enough: with a space
        # (the list's own "a, b"), a short entry still stops the service.
        entries = (previous or "").split(",")
        olds: list[str] = []
        for first in range(len(entries)):
            for last in range(first + 1, len(entries) + 1):
                olds.extend(_forms(",".join(entries[first:last])))
        for number, entry in enumerate(entries, start=1):
            if entry.strip() and not _forms(_joined_without_spaces(entries, number - 1)):
                raise ValueError(
                    f"ENCRYPTION_SECRET_PREVIOUS: entry {number} is shorter than "
                    f"{MIN_SECRET_LENGTH} characters, which no ENCRYPTION_SECRET can be"
                )
        return cls(secret, list(dict.fromkeys(olds)))

    def __repr__(self) -> str:
        return f"TokenCipher(current_key_id={self.current_key_id!r}, keys={len(self._keys)})"

    @property
    def current_key_id(self) -> str:
        return self._current.key_id

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def encrypt(self, plaintext: str, business_id: str, field_name: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._current.aead.encrypt(
            nonce, plaintext.encode("utf-8"), _aad(business_id, field_name)
        )
        body = base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")
        return f"{PREFIX}{self._current.key_id}:{body}"

    def decrypt(self, stored: str, business_id: str, field_name: str) -> str:
        key_id = key_id_of(stored)
        key = self._keys.get(key_id)
        if key is None:
            raise CryptoError(
                f"no key for key id {key_id}: add its secret to ENCRYPTION_SECRET_PREVIOUS"
            )
        body = stored[len(PREFIX) + len(key_id) + 1 :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except ValueError:
            raise CryptoError("malformed encrypted value") from None
        if len(raw) <= NONCE_BYTES:
            raise CryptoError("malformed encrypted value")
        try:
            plain = key.aead.decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(business_id, field_name)
            )
        except InvalidTag:
            raise CryptoError(
                f"encrypted value failed authentication (key id {key_id}): "
                "tampered, or moved from another business or field"
            ) from None
        return plain.decode("utf-8")

    def fingerprint(self, data: bytes) -> str:
        """What a request asked, as ``<key id>:<HMAC-SHA256>``: keyed, because a request may
        carry a token, and a plain hash of it at rest could be checked against guesses."""
        digest = hmac.new(self._current.mac, data, "sha256").hexdigest()
        return f"{self._current.key_id}:{digest}"

    def same_fingerprint(self, stored: str, data: bytes) -> bool:
        """Whether ``data`` is what the stored fingerprint was made of (under any known key, so
        a retry that reaches a replica already rolled to a new key still matches)."""
        key_id, _, digest = stored.partition(":")
        key = self._keys.get(key_id)
        if key is None:
            return False
        return hmac.compare_digest(digest, hmac.new(key.mac, data, "sha256").hexdigest())

    def needs_rotation(self, stored: str) -> bool:
        return not hmac.compare_digest(key_id_of(stored), self._current.key_id)
