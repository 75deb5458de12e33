"""Hostile text against the bot's text processing: every module-level pattern of
``services/gateway/bot`` (and the lists of them) is run on messages of up to WhatsApp's 4,096
characters built from its own words (each repeated with and without separators, with a failing
suffix), mixed scripts, emoji, combining marks, RTL marks and joiners; then the rules' whole
``extract`` on the same kinds of message. Prints each pattern's slowest message, in CPU time,
by use (search, sub, fullmatch): see how the bot uses a pattern before calling it a finding.

    PYTHONPATH=. python -m tests.support.hostile_text [--extract] [--top 15]

A manual tool, not a test: the suite holds no timed assertions. A use near or over ~50 ms on
one message is a finding; the tests that guard the
fixes run a rule on a run far longer than WhatsApp allows, so quadratic matching meets the
suite's timeout.
"""

from __future__ import annotations

import argparse
import itertools
import re
import time
from collections.abc import Iterator
from datetime import date
from types import ModuleType
from typing import Any

from services.gateway.bot import dialogue, extract, llm, offers, places

LIMIT = 4096  # WhatsApp's longest text message
SUFFIXES = ("", " x", "!", " 5", " @d1", "\u200d", " zzzz")
SEPARATORS = ("", " ", "  ", "-", "/", ".", " a ", "\u200f", "\u200d", "\u0301", " 🙂 ", " 12 ")
OTHERS = ("a", "1", "12", "1/1", "'", ".", "-", "🙂", "\u0301", "\u200f", "اب", "日本", "x" * 50)


def patterns(module: ModuleType) -> Iterator[tuple[str, re.Pattern[str]]]:
    """The module's compiled patterns, also those inside its lists of (pattern, …) rules."""
    short = module.__name__.rsplit(".", 1)[-1]
    for name, value in vars(module).items():
        if isinstance(value, re.Pattern):
            yield f"{short}.{name}", value
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                for part in item if isinstance(item, tuple) else (item,):
                    if isinstance(part, re.Pattern):
                        yield f"{short}.{name}[{index}]", part


def words(pattern: str) -> list[str]:
    """The literal words a pattern names ("on", "this", "proximo" …)."""
    return sorted(set(re.findall(r"(?<!\\)[a-zñ']{1,20}", pattern)))


def messages(literals: list[str]) -> Iterator[str]:
    """Runs of each word (or two of them) up to the limit, each with a failing suffix."""
    for word in [*literals[:200], *OTHERS]:
        for separator in SEPARATORS:
            unit = word + separator
            run = unit * ((LIMIT - 8) // len(unit))
            for suffix in SUFFIXES:
                yield run[: LIMIT - len(suffix)] + suffix
    for first, second in itertools.islice(itertools.combinations(literals[:60], 2), 400):
        unit = f"{first} {second} "
        yield (unit * (LIMIT // len(unit)))[: LIMIT - 2] + " x"


def cpu(call: Any, *args: Any) -> float:
    start = time.process_time()
    call(*args)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extract", action="store_true", help="time extract() as a whole")
    parser.add_argument("--top", type=int, default=15)
    options = parser.parse_args()
    found = [p for module in (extract, dialogue, llm, offers, places) for p in patterns(module)]
    worst: list[tuple[float, str, str]] = []
    if options.extract:
        today = date(2026, 11, 23)
        extract.extract("qq zz", today)  # a lone phrase: dateparser's one-off loading
        literals = words(" ".join(pattern.pattern for _, pattern in found))
        for text in messages(literals):
            worst.append((cpu(extract.extract, text, today), "extract", text))
    else:
        for name, pattern in found:
            for text in messages(words(pattern.pattern)):
                # Each use on its own: a pattern the bot only fullmatches (dialogue.CHOICE) is
                # slow to search, which no message meets.
                uses = {"search": pattern.search, "sub": lambda t, p=pattern: p.sub(" ", t)}
                uses["fullmatch"] = pattern.fullmatch
                times = {use: cpu(call, text) for use, call in uses.items()}
                worst.extend((spent, f"{name} {use}", text) for use, spent in times.items())
                if max(times.values()) > 1.0:
                    break  # this pattern is a finding already
    worst.sort(reverse=True)
    if not options.extract:  # each pattern's slowest
        worst = sorted({row[1]: row for row in reversed(worst)}.values(), reverse=True)
    for spent, name, text in worst[: options.top]:
        print(f"{spent * 1000:8.1f} ms  {name:36} {text[:40]!r} … {text[-12:]!r}")


if __name__ == "__main__":
    main()
