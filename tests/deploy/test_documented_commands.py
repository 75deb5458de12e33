"""The commands the README and docs/ give an operator, held to the code they call: every
``python -m services.…`` line parses with that tool's own argument parser, every ``grpcurl``
example names a method the protos define, with a request body whose fields and enum values
they define too (what grpcurl would refuse), and every gateway request they show (``METHOD
/path`` and ``curl`` against the gateway) is a route of the gateway with that method. Checked
on the text, without running anything: the services answering these calls for real is what the
services' own tests do."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool, json_format
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2

from parley.business.v1 import business_pb2
from parley.search.v1 import search_pb2
from parley.session.v1 import session_pb2
from services.business import cli as business_cli
from services.common import healthcheck
from services.dev import chat
from services.gateway import main as gateway_main
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from services.session import migrate

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Imported for their descriptors: grpcurl's examples are looked up in the default pool.
PROTOS = (business_pb2, search_pb2, session_pb2, health_pb2)


PARSERS: dict[str, Callable[[list[str]], object]] = {
    "services.business.cli": lambda argv: business_cli.parser().parse_args(argv),
    "services.session.migrate": lambda argv: migrate.parser().parse_args(argv),
    "services.common.healthcheck": lambda argv: healthcheck.parser().parse_args(argv),
    "services.dev.chat": lambda argv: chat.parser().parse_args(argv),
    "services.gateway.main": gateway_main.parse_args,
}
# The servers take no arguments.
SERVERS = {f"services.{name}.server" for name in ("session", "business", "search")}


def _text(path: Path) -> str:
    # A shell line continued with a backslash is one command.
    return path.read_text().replace("\\\n", " ")


def _spans(text: str) -> list[str]:
    """Each line of a fenced block, and each inline code span elsewhere."""
    spans: list[str] = []
    for index, part in enumerate(re.split(r"^```.*$", text, flags=re.MULTILINE)):
        if index % 2:
            spans += part.splitlines()
        else:
            spans += re.findall(r"`([^`\n]+)`", part)
    return spans


def commands(program: str) -> list[tuple[str, str]]:
    """(file, command from ``program`` on) for every mention of it in the docs."""
    found = []
    for path in DOCS:
        for span in _spans(_text(path)):
            start = span.find(program)
            if start != -1:
                found.append((path.name, span[start:].replace("\\|", "|")))
    return found


def python_argv(command: str) -> tuple[str, list[str]] | None:
    """``python -m module args…`` as the module and its argv, the docs' notation undone:
    ``[--flag]`` → ``--flag``, ``<id>`` → a value, ``a|b|c`` → ``a``, and the shell's comments,
    pipes and redirections cut off. None for a usage line of placeholders (``…``, ``COMMAND``)."""
    command = re.split(r"\s(?:#|\||>|<|&&)\s", command)[0]
    if "…" in command or "COMMAND" in command or "<command>" in command:
        return None
    command = re.sub(r"\[([^\]]*)\]", r"\1", command)
    command = re.sub(r"<[a-z_]+>", "x", command)
    words = shlex.split(command)
    module, argv = words[2], words[3:]
    return module, [word.split("|")[0] if "|" in word else word for word in argv]


def test_every_documented_python_command_parses_with_its_tool() -> None:
    checked = 0
    for name, command in commands("python -m services."):
        parsed = python_argv(command)
        if parsed is None:
            continue
        module, argv = parsed
        if module in SERVERS:
            assert argv == [], (name, command)
            continue
        assert module in PARSERS, f"{name}: {command}: no such tool"
        if not argv:  # the tool named in prose, not a command to run
            continue
        try:
            PARSERS[module](argv)
        except SystemExit:
            pytest.fail(f"{name}: `{command}` is refused by {module}'s own parser")
        checked += 1
    assert checked >= 25, checked


@pytest.mark.parametrize(
    "tool", [business_cli, migrate, healthcheck, chat], ids=lambda tool: tool.__name__
)
def test_each_tool_says_how_the_docs_run_it(tool: object) -> None:
    """Its usage line is the command the docs give (the probe's said ``healthcheck.py``, and its
    description stopped mid-sentence: "a probe for compose and anything without")."""
    cli = tool.parser()  # type: ignore[attr-defined]
    assert cli.prog == f"python -m {tool.__name__}"  # type: ignore[attr-defined]
    assert not cli.description or cli.description.endswith("."), cli.description


def test_a_misspelt_documented_command_would_be_caught() -> None:
    parsed = python_argv("python -m services.session.migrate export --bussiness-id acme > x.jsonl")
    assert parsed == ("services.session.migrate", ["export", "--bussiness-id", "acme"])
    with pytest.raises(SystemExit):
        PARSERS[parsed[0]](parsed[1])
    assert python_argv("python -m services.business.cli show <id> | --subdomain acme") == (
        "services.business.cli",
        ["show", "x"],
    )


def grpcurl_calls() -> list[tuple[str, str, str, dict[str, object]]]:
    """(file, service, method, request) of every grpcurl example that makes a call."""
    calls = []
    for name, command in commands("grpcurl "):
        target = re.search(r"\s([a-z][a-z0-9]*(?:\.[a-z0-9]+)*\.[A-Z]\w*)/([A-Z]\w*)", command)
        if target is None:
            continue
        body = re.search(r"-d '([^']*)'", command)
        calls.append((name, target[1], target[2], json.loads(body[1]) if body else {}))
    return calls


def _check_call(name: str, service: str, method: str, request: dict[str, object]) -> None:
    found = descriptor_pool.Default().FindServiceByName(service).FindMethodByName(method)
    assert found is not None, f"{name}: {service}/{method} is not in the protos"
    try:
        json_format.ParseDict(request, GetMessageClass(found.input_type)())
    except json_format.ParseError as error:
        pytest.fail(f"{name}: {service}/{method} {request}: {error}")


def test_every_grpcurl_example_calls_a_real_method_with_real_fields() -> None:
    pool = descriptor_pool.Default()
    calls = grpcurl_calls()
    for call in calls:
        _check_call(*call)
    assert len(calls) >= 12, calls
    # And the services named to `describe` or to health checks are real ones.
    for name, command in commands("grpcurl "):
        for named in re.findall(r"\b(parley\.\w+\.v\d+\.\w+Service)\b", command):
            assert pool.FindServiceByName(named), (name, command)


def test_every_buf_curl_example_speaks_grpc_to_a_real_method() -> None:
    """`buf curl` speaks the Connect protocol unless told otherwise, which the services answer
    with a bare HTTP/2 stream error; and plaintext HTTP/2 needs saying too. (Was a gap: the
    README said `buf curl` works and gave no example, and `buf curl http://…` failed so.)"""
    examples = commands("buf curl ")
    for name, command in examples:
        assert "--protocol grpc" in command, (name, command)
        if "http://" in command:
            assert "--http2-prior-knowledge" in command, (name, command)
    calls = []
    for name, command in examples:
        target = re.search(r"https?://[^/\s]+/([\w.]+)/(\w+)", command)
        if target is not None:
            body = re.search(r"-d '([^']*)'", command)
            calls.append((name, target[1], target[2], json.loads(body[1]) if body else {}))
    for call in calls:
        _check_call(*call)
    assert len(examples) >= 2 and calls, examples


def test_a_wrong_field_in_a_grpcurl_example_would_be_caught() -> None:
    request = GetMessageClass(
        descriptor_pool.Default()
        .FindServiceByName("parley.search.v1.SearchService")
        .FindMethodByName("SearchFlights")
        .input_type
    )()
    with pytest.raises(json_format.ParseError):
        json_format.ParseDict({"origin": "NYC", "departure": "2026-12-18"}, request)


def test_every_kubectl_command_on_parleys_workloads_names_its_namespace() -> None:
    """The manifests put everything in the namespace ``parley`` and the docs never tell anyone to
    make it their context's default: a ``kubectl get pods -l …`` without ``-n parley`` reads the
    default namespace and answers *No resources found*, which at night reads as *nothing runs*.
    (Was a defect: the runbook's ParleyQueueUnattended row listed the workers that way.)"""
    checked = 0
    for name, command in commands("kubectl "):
        if name == "reliability.md":  # quotes what bugs looked like
            continue
        if re.match(r"kubectl (?:apply|diff|kustomize) ", command):
            continue  # the kustomization sets the namespace
        if re.search(r"\b(?:deploy|svc|pods?|hpa|certificate)\b|\s-l\s", command):
            assert re.search(r"\s(?:-n|--namespace)[ =]parley\b", command), (name, command)
            checked += 1
    assert checked > 10, checked


# "GET /health", "GET|POST /webhooks/whatsapp", "DELETE /admin/users/…" in the text.
HTTP_MENTION = re.compile(
    r"\b((?:GET|HEAD|POST|PUT|PATCH|DELETE)(?:\|(?:GET|HEAD|POST|PUT|PATCH|DELETE))*)"
    r" (/[\w./{}$<>…-]*)"
)
# A curl command's URL on the gateway, as the docs write it.
GATEWAY_URL = re.compile(r"(?:\$GW?\b|localhost:8000|127\.0\.0\.1:8000)(/[^\s\"'?`)]*)")


def gateway_routes() -> list[tuple[str, re.Pattern[str]]]:
    """(method, path) of every route of the gateway, from its OpenAPI document (the app is
    built, not started: nothing is connected to)."""
    paths = create_app(GatewaySettings(api_key="k" * 16)).openapi()["paths"]
    return [
        (method.upper(), re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "/?$"))
        for path, operations in paths.items()
        for method in operations
    ]


def documented_requests() -> list[tuple[str, str, str]]:
    """(file, method, path) of every request to the gateway the docs show."""
    found = []
    for path in DOCS:
        text = _text(path)
        for mention in HTTP_MENTION.finditer(text):
            url = mention[2].rstrip(".").split("?")[0]
            if url.startswith(("/v1/", "/v2/")):  # Amadeus's contract (docs/search.md)
                continue
            found += [(path.name, method, url) for method in mention[1].split("|")]
        for span in _spans(text):
            for command in re.findall(r"curl\b[^;|`]*", span.replace("\\|", "|")):
                url = GATEWAY_URL.search(command)
                if url is None:
                    continue
                method = re.search(r"-X\s*([A-Z]+)", command)
                sends = re.search(r"\s(?:-d|--data\S*)\s", command)
                found.append(
                    (path.name, method[1] if method else "POST" if sends else "GET", url[1])
                )
    return found


def test_every_documented_gateway_request_is_a_route_with_that_method() -> None:
    routes = gateway_routes()

    def served(method: str, url: str) -> bool:
        method = "GET" if method == "HEAD" else method  # every GET answers HEAD too
        if url.endswith("…"):  # "DELETE /admin/users/…": any route under it
            return any(m == method and r.pattern[1:].startswith(url[:-1]) for m, r in routes)
        return any(m == method and r.match(url) for m, r in routes)

    requests = documented_requests()
    wrong = [request for request in requests if not served(*request[1:])]
    assert not wrong, f"no such route of the gateway: {wrong}"
    assert len(requests) >= 80, len(requests)


def test_a_documented_request_the_gateway_does_not_serve_would_be_caught() -> None:
    routes = gateway_routes()
    for method, url in (("PUT", "/admin/businesses/abc"), ("GET", "/admin/dead-letter")):
        assert not any(m == method and r.match(url) for m, r in routes)
    assert any(m == "POST" and r.match("/admin/dead-letters/1-0/replay") for m, r in routes)
