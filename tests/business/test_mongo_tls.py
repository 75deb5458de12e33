"""The business store's MongoDB over TLS (``tls=true`` in ``MONGODB_URI``), against a real
SecantusDB serving TLS: the URI's CA verifies the server, with PyMongo's own SSL context."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.business.mongo_store import MongoStore
from tests.business.conftest import SecretRegistry, fresh_database, secantusdb
from tests.deploy.conftest import make_pki


async def test_mongodb_over_tls_verifies_the_server_without_python_313s_strict_flags(
    tmp_path: Path, registry: SecretRegistry
) -> None:
    """PyMongo builds its SSL context itself, not with ``ssl.create_default_context``: Python
    3.13's strict verification (VERIFY_X509_STRICT) is not in it, so a server certificate without
    RFC 5280's key identifiers (as a hand-made one may be) is accepted on every Python, where the
    Redis clients refuse it from 3.13 (tests/deploy/test_rediss.py). One from a CA the URI does not
    name is refused."""
    pki = make_pki(tmp_path / "pki", key_identifiers=False)
    stranger = make_pki(tmp_path / "stranger", ca_name="someone-else-ca")
    tls = ("--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key))
    query = f"?tls=true&tlsCAFile={pki.ca}"
    with secantusdb(registry.log_dir / "secantusdb-tls.log", *tls, query=query) as uri:
        store = MongoStore(uri, database=fresh_database(), min_pool_size=1, max_pool_size=2)
        try:
            await store.ping()  # the indexes made and a ping answered, through TLS
            assert await store.index_names()
        finally:
            await store.close()
        wrong_ca = uri.replace(str(pki.ca), str(stranger.ca))
        refused = MongoStore(wrong_ca, database=fresh_database(), min_pool_size=0, timeout_ms=1000)
        try:
            with pytest.raises(ConnectionError, match="MongoDB unavailable"):
                await refused.ping()
        finally:
            await refused.close()
