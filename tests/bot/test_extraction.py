"""The labelled extraction set, measured as a whole through the real search service: at least
95% of the phrasings must come out exactly (every slot, places resolved to the right city), and
none that came out right may regress."""

from __future__ import annotations

import re
from datetime import date
from typing import Any, cast

import dateparser
import pytest

from parley.search.v1 import search_pb2_grpc
from services.gateway.bot.extract import (
    DATEPARSER_LIMIT,
    DateContext,
    as_written,
    extract,
    find_dates,
    find_period,
)
from services.gateway.bot.places import SearchPlaces, decide, split_phrase
from services.gateway.engine import SearchPort
from tests.bot.phrasings import CASES, TODAY, Case

TARGET = 0.95
# Phrasings allowed to come out wrong (none today). The target alone let a change that broke
# 10 of them (Berlin and Bangkok asked about) pass at 191/201: a miss is a regression unless
# it is named here, with why.
KNOWN_MISSES: frozenset[str] = frozenset()


async def _city(places: SearchPlaces, phrase: str | None) -> str | None:
    """The resolved place as "city|CODE", so a label may name either."""
    if not phrase:
        return None
    decision = decide(phrase, await places.resolve(phrase))
    if decision.place is None:
        return "<ambiguous>" if decision.choices else "<not found>"
    return f"{decision.place.city}|{decision.place.code}"


async def outcome(places: SearchPlaces, case: Case) -> dict[str, Any]:
    found = extract(case.text, TODAY, case.locale)
    return {
        "o": await _city(places, found.origin),
        "d": await _city(places, found.destination),
        "p": tuple(
            [
                await _city(places, part)
                for phrase in found.places
                for part in await split_phrase(places, phrase)
            ]
        ),
        "dep": found.depart.isoformat() if found.depart else None,
        "ret": found.return_date.isoformat() if found.return_date else None,
        "n": found.nights,
        "a": found.adults,
        "c": found.cabin,
        "ns": found.non_stop,
        "ow": found.one_way,
    }


def expected(case: Case) -> dict[str, Any]:
    return {
        "o": case.o,
        "d": case.d,
        "p": case.p,
        "dep": case.dep,
        "ret": case.ret,
        "n": case.n,
        "a": case.a,
        "c": case.c,
        "ns": case.ns,
        "ow": case.ow,
    }


def _place_matches(got: Any, want: Any) -> bool:
    if got is None or want is None:
        return got is None and want is None
    city, _, code = str(got).partition("|")
    names = {code.casefold(), city.casefold()}
    names.update(part.strip().casefold() for part in re.split(r"[,/]", city))
    return str(want).casefold() in names


def _same(got: dict[str, Any], want: dict[str, Any]) -> bool:
    for key, value in want.items():
        if key in ("o", "d"):
            if not _place_matches(got[key], value):
                return False
        elif key == "p":
            if len(got[key]) != len(value) or not all(
                _place_matches(g, w) for g, w in zip(got[key], value, strict=True)
            ):
                return False
        elif got[key] != value:
            return False
    return True


def test_the_set_is_big_and_varied() -> None:
    assert len(CASES) >= 150
    assert len({c.text for c in CASES}) == len(CASES), "duplicate phrasings"
    assert sum(c.locale == "es" for c in CASES) >= 10


async def test_extraction_accuracy(
    search_stub: search_pb2_grpc.SearchServiceStub, capsys: pytest.CaptureFixture[str]
) -> None:
    places = SearchPlaces(cast(SearchPort, search_stub))
    misses: list[str] = []
    regressions: list[str] = []
    for case in CASES:
        got, want = await outcome(places, case), expected(case)
        if not _same(got, want):
            diff = {k: (got[k], want[k]) for k in want if not _same({k: got[k]}, {k: want[k]})}
            misses.append(f"  {case.text!r}: got/want {diff}")
            if case.text not in KNOWN_MISSES:
                regressions.append(case.text)
    exact = len(CASES) - len(misses)
    accuracy = exact / len(CASES)
    with capsys.disabled():
        print(f"\nextraction: {exact}/{len(CASES)} exactly right = {accuracy:.1%}")
        for line in misses:
            print(line)
    assert accuracy >= TARGET, f"{accuracy:.1%} < {TARGET:.0%}"
    assert not regressions, f"phrasings that came out right before: {regressions}"


@pytest.mark.parametrize(
    ("text", "depart", "nights"),
    [
        # Monday 23 November 2026.
        ("NYC to London a week from today", "2026-11-30", None),
        ("NYC to London a week today", "2026-11-30", None),
        ("NYC to London two weeks from now", "2026-12-07", None),
        ("NYC to London 3 days from now", "2026-11-26", None),
        ("NYC to London a week from tomorrow", "2026-12-01", None),
        ("NYC to London a week from friday", "2026-12-04", None),
        ("NYC to London 10 days from today for 5 nights", "2026-12-03", 5),
        # A stay that starts on a day is still a stay.
        ("NYC to London for a week from friday", "2026-11-27", 7),
        ("NYC to London friday for a week", "2026-11-27", 7),
    ],
)
def test_a_time_counted_from_a_day_is_the_departure(
    text: str, depart: str, nights: int | None
) -> None:
    """'A week from today' was a departure today and a 7-night stay; 'from now' also lost the
    origin ('NYC' was left as a place nobody marked)."""
    found = extract(text, date(2026, 11, 23))
    assert (found.depart.isoformat() if found.depart else None, found.nights) == (depart, nights)
    assert (found.origin, found.destination, found.places) == ("nyc", "london", [])


@pytest.mark.parametrize(
    ("text", "depart", "back"),
    [
        # Monday 23 November 2026: the coming Friday is the 27th, the one after the 4th.
        ("NYC to London on friday the 4th", "2026-12-04", None),
        ("NYC to London friday, the 4th", "2026-12-04", None),
        ("NYC to London fri 4th", "2026-12-04", None),
        ("NYC to London friday 4 dec", "2026-12-04", None),
        ("NYC to London friday after next", "2026-12-04", None),
        ("NYC to London friday 4th back sunday the 13th", "2026-12-04", "2026-12-13"),
        ("NYC to London friday back sunday after next", "2026-11-27", "2026-12-06"),
        # In British English "Friday week" is a week after the coming Friday.
        ("NYC to London Friday week", "2026-12-04", None),
        ("NYC to London on Friday week back Sunday week", "2026-12-04", "2026-12-06"),
        # A weekday and a number that is not a date stay apart.
        ("NYC to London friday 2 adults", "2026-11-27", None),
    ],
)
def test_a_weekday_written_with_its_date_or_after_next_is_that_day(
    text: str, depart: str, back: str | None
) -> None:
    """'Friday the 4th' was the coming Friday (the 27th), the 4th dropped without a word;
    'Friday after next' was the coming Friday too, with 'after next' left in the destination,
    and so was 'Friday week' (until session 19)."""
    found = extract(text, date(2026, 11, 23))
    got = (found.depart, found.return_date)
    assert tuple(d.isoformat() if d else None for d in got) == (depart, back)
    assert (found.origin, found.destination, found.places) == ("nyc", "london", [])


@pytest.mark.parametrize(
    ("text", "origin", "destination", "depart", "back"),
    [
        # An airport code that is a short weekday, next to a route word: the place.
        ("from SAT to JFK tomorrow", "sat", "jfk", "2026-11-24", None),
        ("from sat to jfk on friday", "sat", "jfk", "2026-11-27", None),
        ("fly SUN to LAX tomorrow", "sun", "lax", "2026-11-24", None),
        ("fly to LAX from SUN tomorrow", "sun", "lax", "2026-11-24", None),
        ("JFK to SAT on friday", "jfk", "sat", "2026-11-27", None),
        ("SAT-JFK friday", "sat", "jfk", "2026-11-27", None),
        ("MON to LAX next friday", "mon", "lax", "2026-11-27", None),
        ("FROM SAT TO JFK TOMORROW", "sat", "jfk", "2026-11-24", None),
        # A weekday on the other side of the route word, or no route word: the day.
        ("NYC to London from sat to mon", "nyc", "london", "2026-11-28", "2026-11-30"),
        ("NYC to London from SAT to MON", "nyc", "london", "2026-11-28", "2026-11-30"),
        ("NYC to London Fri to SUN", "nyc", "london", "2026-11-27", "2026-11-29"),
        ("NYC to London on SAT", "nyc", "london", "2026-11-28", None),
        ("NYC TO LONDON SAT", "nyc", "london", "2026-11-28", None),
        ("fly sat to paris from nyc", "nyc", "paris", "2026-11-28", None),
        ("change it to SAT", None, None, "2026-11-28", None),
        ("change the date to sun", None, None, "2026-11-29", None),
    ],
)
def test_a_weekday_that_is_an_airport_code_is_read_by_its_route_word(
    text: str, origin: str | None, destination: str | None, depart: str, back: str | None
) -> None:
    """(Was a bug: SAT, SUN and MON were always weekdays, so *from SAT to JFK* asked where from
    and flew on Saturday, and *MON to LAX next Friday* flew on Monday.)"""
    found = extract(text, date(2026, 11, 23))
    got = (found.depart, found.return_date)
    assert tuple(d.isoformat() if d else None for d in got) == (depart, back)
    # ("date" is left of "change the date to sun": the dialogue takes no unclear place.)
    assert (found.origin, found.destination) == (origin, destination)
    assert all(code not in found.places for code in ("sat", "sun", "mon"))


@pytest.mark.parametrize(
    ("phrase", "text", "written"),
    [
        ("cordoba", "de Córdoba a Madrid mañana", "Córdoba"),
        ("san jose", "from  SAN   José to Miami", "SAN José"),
        ("la coruna", "a La Coruña el viernes", None),  # ñ is kept by normalize: no match
        ("la coruña", "a La Coruña el viernes", "La Coruña"),
        ("o'hare", "from O\u2019Hare tomorrow", "O\u2019Hare"),
        ("london", "NYC → London", "London"),
        ("jose", "to Jose\u0301 tomorrow", "Jose\u0301"),  # the accent after its letter too
        ("new york", "nyc to london", None),  # not in the text: the caller keeps its phrase
    ],
)
def test_a_phrase_is_found_as_the_user_wrote_it(
    phrase: str, text: str, written: str | None
) -> None:
    assert as_written(phrase, text) == written


@pytest.mark.parametrize("word", ["a", "en", "para", "in"])
def test_a_long_run_of_the_words_before_a_period_still_reads_the_period(word: str) -> None:
    """The words that may come before a period ("for around the end of the month") are read
    three at most: unbounded, every period rule backtracked through a run of them at every
    position, and a 4,000-character "a a a …" cost 1.7 s of the worker's event loop (measured
    by hand: the suite holds no timed assertions). The period after such a run is still read."""
    found = extract(f"{word} " * 1300 + "NYC to London at the end of the month", date(2026, 11, 23))
    assert found.period is not None and (found.period.kind, found.period.month) == ("end", 11)
    assert found.destination == "london"


@pytest.mark.parametrize("word", ["on", "el", "this", "proximo"])
def test_a_long_run_of_the_words_before_a_weekday_is_read_in_linear_time(word: str) -> None:
    """The words before a weekday ("on this coming Friday") are read three at most: unbounded,
    each weekday rule read the whole run from every position in it, quadratic time (0.13 s of
    the worker's event loop for 4,000 characters of "on on on …"). This run is a hundred times
    longer: quadratic, it takes many minutes and meets the suite's timeout; linear, under a
    second."""
    found_text, found = find_dates(
        f"{word} " * 100_000 + "friday", DateContext(date(2026, 11, 23), False)
    )
    assert [item.value for item in found] == [date(2026, 11, 27)]
    assert found_text.endswith(f"{word} @d0")


@pytest.mark.parametrize("word", ["en", "para", "for"])
def test_a_long_run_of_the_words_before_a_month_or_reyes_is_read_in_linear_time(word: str) -> None:
    """As the words before a weekday: "en diciembre", "para Reyes" took a whole run of "en en …"
    from every position. A run 150 times WhatsApp's longest message, quadratic, meets the
    suite's timeout."""
    for period, kind in (("diciembre", "month"), ("reyes", "reyes")):
        _, found = find_period(f"{word} " * 200_000 + f"{word} {period}", date(2026, 11, 23))
        assert found is not None and found.kind == kind


@pytest.mark.parametrize(
    ("text", "locale", "destination"),
    [
        ("NYC a Londres " + "y " * 150_000 + "el viernes", "es", "londres"),
        ("NYC to London " + "and " * 100_000 + "on friday", "en", "london"),
    ],
)
def test_a_long_run_of_ands_after_a_route_is_read_in_linear_time(
    text: str, locale: str, destination: str
) -> None:
    """Whether a second trip begins at an "and" ("… then Paris to Rome") was asked of the whole
    text before and after each "and", quadratic time: 0.14 s of the worker's event loop for
    4,000 characters of "y y y …" after "NYC a Londres". These runs are 50 to 75 times longer,
    which quadratic matching cannot finish within the suite's timeout; the trip is still read."""
    found = extract(text, date(2026, 11, 23), locale)
    assert (found.origin, found.destination, found.more_trips) == ("nyc", destination, False)
    assert found.depart == date(2026, 11, 27)


@pytest.mark.parametrize("space", ["\n", " ", "\u2003"])
def test_a_long_run_of_spaces_or_line_breaks_is_read_in_linear_time(space: str) -> None:
    """The rules that read "NYC -> London" and "NYC - London" begin with any run of spaces, and
    read the whole run from every space in it, quadratic time: 0.15 s of the worker's event loop
    for a message of 4,000 line breaks. Runs are one space before any rule now; this one is a
    hundred times longer, which quadratic matching cannot finish within the suite's timeout."""
    for arrow in ("->", "-"):
        found = extract(f"NYC{space * 400_000}{arrow} London", date(2026, 11, 23))
        assert (found.origin, found.destination) == ("nyc", "london")


@pytest.mark.parametrize("unit", ["a-", "a/", "' a ", "a 12 "])
def test_a_long_lone_phrase_is_not_handed_to_dateparser(
    unit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone phrase the rules leave may be a date dateparser reads ("next month"), but its time
    grows with the text: a 4,000-character "a-a-a-…" held the worker's event loop for up to
    0.2 s in dateparser alone. Dates are a few words; a longer phrase is not asked about (the
    library's parse is wrapped here only to see what it is given, and still does the work)."""
    given: list[str] = []
    parse = dateparser.parse

    def seen(text: str, *args: Any, **kwargs: Any) -> Any:
        given.append(text)
        return parse(text, *args, **kwargs)

    monkeypatch.setattr(dateparser, "parse", seen)
    found = extract(unit * (4000 // len(unit)), date(2026, 11, 23))
    assert found.depart is None
    assert all(len(text) <= DATEPARSER_LIMIT for text in given)
    short = "qq " + "".join(chr(97 + ord(ch) % 26) for ch in unit)  # one per test (memoized)
    extract(short, date(2026, 11, 23))
    assert short in given  # a short one still is


# "Ldn" is how people write London; it is also the code of Lamidanda, Nepal, which the exact
# code took (at 100, and decide took any candidate with the code as written).
@pytest.mark.parametrize("phrase", ["Ldn", "ldn", "LDN"])
async def test_a_city_s_abbreviation_is_that_city_not_the_airfield_with_that_code(
    search_stub: search_pb2_grpc.SearchServiceStub, phrase: str
) -> None:
    places = SearchPlaces(cast(SearchPort, search_stub))
    assert await _city(places, phrase) == "London|LON"
    # The airfield is still offered, below: a code is never lost.
    assert "LDN" in [c.code for c in await places.resolve(phrase)]
