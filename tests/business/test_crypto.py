"""Token encryption: AES-256-GCM, HKDF-derived keys, key ids, previous secrets, tampering."""

from __future__ import annotations

import pytest

from services.business.crypto import PREFIX, CryptoError, TokenCipher, key_id_of

SECRET = "current-secret-0123456789abcdef"
OLD = "previous-secret-0123456789abcdef"


def test_round_trip_with_key_id_and_fresh_nonces() -> None:
    cipher = TokenCipher(SECRET)
    first = cipher.encrypt("EAAG-token", "b1", "whatsapp_access_token")
    second = cipher.encrypt("EAAG-token", "b1", "whatsapp_access_token")
    assert first.startswith(PREFIX) and first != second  # random nonce per value
    assert key_id_of(first) == cipher.current_key_id
    assert "EAAG-token" not in first
    assert cipher.decrypt(first, "b1", "whatsapp_access_token") == "EAAG-token"


def test_key_ids_are_stable_and_differ_per_secret() -> None:
    assert TokenCipher(SECRET).current_key_id == TokenCipher(SECRET).current_key_id
    assert TokenCipher(SECRET).current_key_id != TokenCipher(OLD).current_key_id


def test_previous_secrets_still_decrypt_and_need_rotation() -> None:
    stored = TokenCipher(OLD).encrypt("tok", "b1", "twilio_auth_token")
    rotated = TokenCipher.from_settings(SECRET, f" {OLD} , another-old-secret-0123456789 ")
    assert rotated.decrypt(stored, "b1", "twilio_auth_token") == "tok"
    assert rotated.needs_rotation(stored)
    assert not rotated.needs_rotation(rotated.encrypt("tok", "b1", "twilio_auth_token"))
    with pytest.raises(CryptoError, match="ENCRYPTION_SECRET_PREVIOUS"):
        TokenCipher(SECRET).decrypt(stored, "b1", "twilio_auth_token")


@pytest.mark.parametrize(
    ("business_id", "field"), [("b2", "twilio_auth_token"), ("b1", "webhook_app_secret")]
)
def test_ciphertext_is_bound_to_its_business_and_field(business_id: str, field: str) -> None:
    cipher = TokenCipher(SECRET)
    stored = cipher.encrypt("tok-secret-value", "b1", "twilio_auth_token")
    with pytest.raises(CryptoError) as raised:
        cipher.decrypt(stored, business_id, field)
    assert "tok-secret-value" not in str(raised.value)


def test_tampering_is_detected_without_leaking() -> None:
    cipher = TokenCipher(SECRET)
    stored = cipher.encrypt("tok-secret-value", "b1", "f")
    flipped = stored[:-2] + ("A" if stored[-2] != "A" else "B") + stored[-1]
    for bad in (
        flipped,
        stored[:-10],
        "plaintext",
        PREFIX + "nokey",
        PREFIX + cipher.current_key_id + ":!!",
    ):
        with pytest.raises(CryptoError) as raised:
            cipher.decrypt(bad, "b1", "f")
        assert "tok-secret-value" not in str(raised.value)


def test_secrets_are_required_and_never_in_repr() -> None:
    with pytest.raises(ValueError, match="ENCRYPTION_SECRET is required"):
        TokenCipher.from_settings(None, None)
    with pytest.raises(ValueError, match="at least 16"):
        TokenCipher("short")
    assert SECRET not in repr(TokenCipher(SECRET))
