"""Drift between the code and its documentation: every environment variable the code reads is in
the README's Configuration table and in ``.env.example``, and ``.env.example`` (which compose
passes to every container) holds nothing else. Compose and the manifests are held to the same
rule in their own tests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic_settings import BaseSettings

from services.business.settings import BusinessSettings
from services.gateway.bot.settings import BotSettings
from services.gateway.settings import GatewaySettings
from services.search.providers.amadeus import AmadeusSettings
from services.search.settings import SearchSettings
from services.session.settings import SessionSettings
from tests.deploy.envvars import all_reads, direct_reads, read_by, reads_by_part

ROOT = Path(__file__).resolve().parents[2]
ENV_LINE = re.compile(r"^(?:# )?([A-Z][A-Z0-9_]*)=(.*)$")


def readme_rows() -> dict[str, tuple[str, str, str]]:
    """The README's Configuration table: name → (default, used by, meaning), as written."""
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Configuration")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    rows: dict[str, tuple[str, str, str]] = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            names, default, used_by, meaning = (c.strip() for c in line.split(" | "))
            for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", names):
                rows[name] = (default, used_by, meaning.removesuffix(" |"))
    return rows


def readme_variables() -> set[str]:
    return set(readme_rows())


def plain(markdown: str) -> str:
    """A table cell as .env.example writes it: no code quotes, a link's text only."""
    return re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown).replace("`", "")


def env_example() -> dict[str, tuple[bool, str]]:
    """name → (set, not commented out; value)."""
    found: dict[str, tuple[bool, str]] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = ENV_LINE.match(line)
        if match:
            assert match.group(1) not in found, f"{match.group(1)} twice in .env.example"
            found[match.group(1)] = (not line.startswith("#"), match.group(2))
    return found


def test_every_variable_the_code_reads_is_in_the_readme_table() -> None:
    missing = sorted(all_reads() - readme_variables())
    assert not missing, f"add rows to README's Configuration table for: {missing}"


def test_every_variable_the_code_reads_is_in_env_example() -> None:
    missing = sorted(all_reads() - set(env_example()))
    assert not missing, f"add to .env.example (with a comment): {missing}"


def test_env_example_says_of_each_variable_what_the_readme_table_says() -> None:
    """The comment above each line is the README row's meaning, default and readers, and says
    so when compose sets the variable itself. (Was drift: written once by hand, the comments
    kept what the code did then: PROMETHEUS_MULTIPROC_DIR "emptied at start" after the gateway
    stopped removing running processes' files, ENCRYPTION_SECRET with no minimum length.)"""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    wired = {name for s in compose["services"].values() for name in s.get("environment") or {}}
    rows = readme_rows()
    lines = (ROOT / ".env.example").read_text().splitlines()
    for index, line in enumerate(lines):
        match = ENV_LINE.match(line)
        if match:
            default, used_by, meaning = (plain(cell) for cell in rows[match.group(1)])
            said = f"# {meaning} (default: {default}; used by {used_by})"
            if match.group(1) in wired:
                said += " — docker-compose.yml sets it"
            assert lines[index - 1] == said, match.group(1)


def test_env_example_holds_only_variables_the_code_reads() -> None:
    unread = sorted(set(env_example()) - all_reads())
    assert not unread, f".env.example lists variables no code reads: {unread}"


def test_env_example_documents_each_variable_and_sets_only_production_essentials() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    for index, line in enumerate(lines):
        if ENV_LINE.match(line):
            assert lines[index - 1].startswith("# ") and not ENV_LINE.match(lines[index - 1])
    active = {name: value for name, (is_set, value) in env_example().items() if is_set}
    assert active.pop("APP_ENV") == "production"
    # The rest are secrets left for the operator to fill in: empty, so nothing starts by mistake.
    assert active and all(value == "" for value in active.values()), active


def test_a_default_shown_in_env_example_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """A commented line shows the default: uncommenting it changes nothing, and an empty one
    stands for a setting that is unset unless given."""
    classes: list[type[BaseSettings]] = [
        SessionSettings, BusinessSettings, SearchSettings, AmadeusSettings, GatewaySettings,
        BotSettings,
    ]  # fmt: skip
    # The business service reads REDIS_URL only when it is set (cache invalidation), as the line
    # says; every other reader has the default shown.
    unset_here = {("REDIS_URL", BusinessSettings)}
    checked = 0
    for name, (is_set, shown) in env_example().items():
        for cls in classes:
            if is_set or name.lower() not in cls.model_fields or (name, cls) in unset_here:
                continue
            monkeypatch.delenv(name, raising=False)
            default = getattr(cls(), name.lower())
            if shown == "":
                assert default is None, f"{name}: .env.example shows it empty; the default is set"
            else:
                monkeypatch.setenv(name, shown)
                assert getattr(cls(), name.lower()) == default, f"{name}={shown} is not the default"
            checked += 1
    assert checked > 80


def test_collector_sees_settings_fields_of_every_part() -> None:
    parts = reads_by_part()
    assert {"GRPC_TLS_CERT", "GRPC_TLS_KEY", "GRPC_TLS_CA", "APP_ENV"} <= parts["common"]
    assert {"SESSION_PORT"} <= parts["session"] and "SESSION_PORT" not in read_by("gateway")
    assert {"BUSINESS_PORT", "MONGODB_URI"} <= parts["business"]
    assert {"SEARCH_PORT"} <= parts["search"]
    assert {"SESSION_SERVICE_ADDR", "GATEWAY_PORT"} <= parts["gateway"]


def test_collector_sees_direct_environment_reads(tmp_path: Path) -> None:
    source = tmp_path / "example.py"
    source.write_text(
        "import os\nfrom os import environ\n"
        "a = os.environ['ONE']\nb = os.environ.get('TWO', 'x')\nc = os.getenv('THREE')\n"
        "d = 'FOUR' in os.environ\ne = environ.get('FIVE')\nf = os.environ.get(name)\n"
    )
    assert direct_reads(source) == {"ONE", "TWO", "THREE", "FOUR", "FIVE"}
