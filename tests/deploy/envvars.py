"""Which environment variables Parley's code reads, and which part of it reads them.

Two sources, both derived from the code rather than listed by hand:

* every pydantic-settings class defined under ``services/``: the subclasses of
  :class:`services.common.settings.CommonSettings` and any other ``BaseSettings`` there (e.g. a
  provider's own settings), found by importing every module under ``services/`` in a fresh child
  process (nothing leaks into the test process): each field's environment name, honouring
  ``env_prefix`` and string aliases;
* every literal name read directly: ``os.environ[...]``, ``os.environ.get(...)``,
  ``os.getenv(...)`` and ``"NAME" in os.environ`` anywhere under ``services/``.

A variable read by ``services/common`` (or by ``CommonSettings`` itself) belongs to every part.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
PARTS = ("session", "business", "search", "gateway", "dev")

_COLLECT = r"""
import importlib, json, pkgutil, sys
from pydantic_settings import BaseSettings
import services

failures = []
for module in pkgutil.walk_packages(services.__path__, "services."):
    try:
        importlib.import_module(module.name)
    except Exception as error:  # reported, and the test fails on it
        failures.append(f"{module.name}: {type(error).__name__}: {error}")

def subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from subclasses(sub)

found = {}
for cls in set(subclasses(BaseSettings)):
    if not cls.__module__.startswith("services."):
        continue
    prefix = (cls.model_config.get("env_prefix") or "").upper()
    names = []
    for field_name, info in cls.model_fields.items():
        alias = info.validation_alias or info.alias
        choices = getattr(alias, "choices", None)
        if isinstance(alias, str):
            names.append(alias.upper())
        elif choices:
            names.extend(c.upper() for c in choices if isinstance(c, str))
        else:
            names.append(prefix + field_name.upper())
    found[f"{cls.__module__}.{cls.__qualname__}"] = sorted(names)
print(json.dumps({"classes": found, "failures": failures}))
"""


def _part(module_or_path: str) -> str:
    """``services.session.x`` or ``services/session/x.py`` → ``session``; common → ``common``."""
    pieces = module_or_path.removesuffix(".py").replace("/", ".").split(".")
    index = pieces.index("services")
    return pieces[index + 1] if len(pieces) > index + 2 else "common"


@cache
def settings_classes() -> dict[str, list[str]]:
    """``module.Class`` → the environment names it reads (fails loudly on an import error)."""
    result = subprocess.run(
        [sys.executable, "-c", _COLLECT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"collecting settings failed:\n{result.stderr[-3000:]}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    if data["failures"]:
        raise RuntimeError(
            "modules under services/ failed to import:\n" + "\n".join(data["failures"])
        )
    classes: dict[str, list[str]] = data["classes"]
    return classes


def _literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _is_environ(node: ast.AST) -> bool:
    """``os.environ`` or a bare ``environ``."""
    if isinstance(node, ast.Attribute):
        return node.attr == "environ"
    return isinstance(node, ast.Name) and node.id == "environ"


def direct_reads(path: Path) -> set[str]:
    """Literal names read from the environment in one source file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Subscript) and _is_environ(node.value):
            name = _literal(node.slice)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            is_get = isinstance(func, ast.Attribute) and (
                (func.attr in {"get", "pop", "setdefault"} and _is_environ(func.value))
                or func.attr == "getenv"
            )
            name = _literal(node.args[0]) if is_get else None
        elif isinstance(node, ast.Compare) and any(_is_environ(c) for c in node.comparators):
            name = _literal(node.left)
        else:
            name = None
        if name:
            names.add(name)
    return names


@cache
def reads_by_part() -> dict[str, frozenset[str]]:
    """``session`` | ``business`` | ``search`` | ``gateway`` | ``dev`` | ``common`` → names."""
    parts: dict[str, set[str]] = {part: set() for part in (*PARTS, "common")}
    for qualified, names in settings_classes().items():
        parts.setdefault(_part(qualified.rsplit(".", 1)[0]), set()).update(names)
    for path in SERVICES.rglob("*.py"):
        parts.setdefault(_part(str(path.relative_to(ROOT))), set()).update(direct_reads(path))
    return {part: frozenset(names) for part, names in parts.items()}


def read_by(part: str) -> frozenset[str]:
    """What one runnable part reads: its own names and everything common."""
    parts = reads_by_part()
    return parts[part] | parts["common"]


def all_reads() -> frozenset[str]:
    return frozenset().union(*reads_by_part().values())
