"""Runs last among the business tests: every log and CLI output of the run holds no token.

It first drives one more service through every path that touches a secret (create with tokens,
lookups with credentials, a new token, a failed decryption), so the scan never looks at nothing,
then reads everything the business tests wrote: service processes' logs (at DEBUG), the CLI's
outputs, SecantusDB's log, and the logs of code that ran inside pytest.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from parley.business.v1 import business_pb2
from tests.business.conftest import SecretRegistry, demo_request, start_service

pytestmark = pytest.mark.timeout(120)


async def test_no_token_in_any_log_of_the_run(registry: SecretRegistry, tmp_path: Path) -> None:
    db = tmp_path / "business.db"
    running = await start_service(registry, "business-scan", db)
    try:
        request = demo_request(registry)
        created = (await running.stub.CreateBusiness(request)).business
        for include in (False, True, True):
            await running.stub.LookupBusiness(
                business_pb2.LookupBusinessRequest(
                    phone_number_id=created.whatsapp_phone_number_ids[0],
                    include_credentials=include,
                )
            )
        await running.stub.SetChannelToken(
            business_pb2.SetChannelTokenRequest(
                business_id=created.id,
                secret=business_pb2.CHANNEL_SECRET_WEBHOOK_APP_SECRET,
                value=registry.token("webhook"),
            )
        )
        await running.stub.GetBusiness(
            business_pb2.GetBusinessRequest(id=created.id, include_credentials=True)
        )
    finally:
        await running.close()
    # The same store read with another key: decryption fails, and says so without the value.
    other = await start_service(
        registry, "business-wrong-key", db, ENCRYPTION_SECRET="a-different-secret-0123456789"
    )
    try:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await other.stub.GetBusiness(
                business_pb2.GetBusinessRequest(id=created.id, include_credentials=True)
            )
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        for token in registry.tokens:
            assert token not in (raised.value.details() or "")
    finally:
        await other.close()

    files = sorted(p for p in registry.log_dir.iterdir() if p.is_file())
    texts = await asyncio.to_thread(lambda: {p.name: p.read_text(errors="replace") for p in files})
    everything = "\n".join(texts.values())
    # The scan looked at real logs: service lines at DEBUG, the failed decryption, the RPCs.
    assert "business created" in everything and "secret not decryptable" in everything
    assert "LookupBusiness" in everything
    assert len(registry.tokens) >= 4
    leaks = {
        name: token for name, text in texts.items() for token in registry.tokens if token in text
    }
    assert leaks == {}, f"tokens found in logs: {sorted(leaks)}"
