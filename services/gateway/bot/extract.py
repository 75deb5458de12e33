"""Rule-based extraction: one message → whatever trip details it holds.

The message is read in passes, each removing what it understood so the next sees less noise:
dates first (so "3 march" or "the 5th" are never taken for places or traveller counts), then
return and length of stay, travellers, cabin and non-stop, and what is left is split on "from" /
"to" (and their Spanish equivalents) into place phrases. Places are *not* resolved here: they
stay as the text the user wrote, and :mod:`services.gateway.bot.places` resolves them through the
search service. Dates are calendar dates relative to "today" in the business's time zone,
preferring the future; absolute dates go through ``dateparser``.
"""

from __future__ import annotations

import calendar
import functools
import itertools
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

import dateparser
import regex
from rapidfuzz import fuzz, process

CABINS = ("economy", "premium_economy", "business", "first")
# How far ahead a flight can be searched (the search service's bound, and the engine's).
MAX_DAYS_AHEAD = 361


@dataclass(frozen=True)
class NoSuchDate:
    """A day and month the calendar does not have that year: "31 April", "29 February" 2027."""

    day: int
    month: int
    year: int


@dataclass
class Extraction:
    """What one message said. ``None`` means "not mentioned"."""

    origin: str | None = None
    destination: str | None = None
    places: list[str] = field(default_factory=list)  # places with no "from"/"to" around them
    depart: date | None = None
    return_date: date | None = None
    nights: int | None = None
    adults: int | None = None
    # More travellers than one search takes (MAX_TRAVELLERS): said so, and asked how many.
    too_many: int | None = None
    children: int | None = None  # "2 adults and a child", "con 2 niños"; 0: "just me"
    infants: int | None = None  # "with my baby", "un bebé": on a lap, no seat
    some_children: bool = False  # "with the kids", "con los niños": how many is asked
    # Sons and daughters with a count ("con mis 2 hijos", "with my two daughters"), who may be
    # grown up: how many are under 12 (a child's fare) is asked.
    offspring: int | None = None
    cabin: str | None = None
    non_stop: bool | None = None
    one_way: bool | None = None
    unreadable_date: bool = False  # something looked like a date but could not be read
    # A stretch of days instead of a day ("end of the month"): the user is asked which day.
    period: Period | None = None
    depart_day_only: bool = False  # the departure was a day of the month alone ("the 28th")
    # The places read with an inner "de" kept in a name ("Santa Cruz de Tenerife").
    whole_names: tuple[WholeName, ...] = ()
    # (phrase, the phrase with a word trimmed from its edge put back): ("falls",
    # "international falls"), ("kansas", "kansas city"); the dialogue keeps the longer one
    # where it names a place better (see BotEngine._apply).
    edge_names: tuple[tuple[str, str], ...] = ()
    # A departure or return written as a day that does not exist ("29 Feb" in 2027): said so,
    # not taken for a date a year on or for something unreadable.
    no_such_date: NoSuchDate | None = None
    no_such_return: bool = False  # no_such_date was the return ("back 31 April")
    return_weekday: bool = False  # the return was a weekday name ("back Sunday")
    return_day_only: bool = False  # the return was a day of the month alone ("back the 4th")
    depart_weekday: bool = False  # the departure was a weekday name ("Sunday")
    # The message asked for another trip after this one ("NYC to London Friday, then London
    # to Paris Sunday"): only the first is read.
    more_trips: bool = False
    # The departure moved by days: "a day later" +1, "two days earlier" -2, "un día antes".
    shift_days: int = 0
    # The return moved by days: "come back a day later" +1 (with no return yet, a stay).
    return_shift_days: int = 0
    # One more traveller than the trip has ("add my wife", "my wife is coming too").
    add_adults: int = 0
    # Two days to choose from ("Friday or Saturday", "back Sunday or Monday"): neither is
    # searched, the user is asked which (a search is for one day).
    either: tuple[date, date] | None = None
    either_return: bool = False  # the two days are the return's

    def is_empty(self) -> bool:
        return not (
            self.origin
            or self.destination
            or self.places
            or self.depart
            or self.return_date
            or self.nights
            or self.adults
            or self.too_many
            or self.children
            or self.infants
            or self.some_children
            or self.offspring is not None
            or self.cabin
            or self.non_stop is not None
            or self.one_way is not None
            or self.no_such_date is not None
            or self.period is not None
            or self.shift_days
            or self.return_shift_days
            or self.either is not None
            or self.add_adults
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "destination": self.destination,
            "places": list(self.places),
            "depart": self.depart.isoformat() if self.depart else None,
            "return_date": self.return_date.isoformat() if self.return_date else None,
            "nights": self.nights,
            "adults": self.adults,
            "cabin": self.cabin,
            "non_stop": self.non_stop,
            "one_way": self.one_way,
        }


# --- words -------------------------------------------------------------------------------

NUMBER_WORDS = {
    "a": 1,
    "an": 1,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "un": 1,
    "una": 1,
    "uno": 1,
    "dos": 2,
    "tres": 3,
    "cuatro": 4,
    "cinco": 5,
    "seis": 6,
    "siete": 7,
    "ocho": 8,
    "nueve": 9,
    "diez": 10,
    "fifteen": 15,
    "quince": 15,
    "eleven": 11,
    "twelve": 12,
    "twenty": 20,
    "thirty": 30,
    "doce": 12,
    "veinte": 20,
    "treinta": 30,
}
NUM = r"(\d{1,2}|" + "|".join(sorted(NUMBER_WORDS, key=len, reverse=True)) + r")"

WEEKDAYS = {
    "monday": 0,
    "mon": 0,
    "tuesday": 1,
    "tue": 1,
    "tues": 1,
    "wednesday": 2,
    "wed": 2,
    "thursday": 3,
    "thu": 3,
    "thur": 3,
    "thurs": 3,
    "friday": 4,
    "fri": 4,
    "saturday": 5,
    "sat": 5,
    "sunday": 6,
    "sun": 6,
    "lunes": 0,
    "martes": 1,
    "miercoles": 2,
    "jueves": 3,
    "viernes": 4,
    "sabado": 5,
    "domingo": 6,
    "weds": 2,
}
# Spanish weekdays as the bot writes them in dates ("vie 27 nov"; not "mar", which is March),
# read as the day only after "el" ("el sáb") or before a day's number not following "to" or "a":
# alone they are airports too (VIE Vienna, LUN Lusaka, DOM Dominica, SAB Saba, MIE Muncie).
SHORT_WEEKDAYS = {
    "lun": "lunes",
    "mie": "miercoles",
    "jue": "jueves",
    "vie": "viernes",
    "sab": "sabado",
    "dom": "domingo",
}
_SHORT = "(" + "|".join(SHORT_WEEKDAYS) + ")"
SHORT_WEEKDAY = re.compile(
    rf"(?:(?<=\bel )|(?<=\beste )|(?<=\bproximo )){_SHORT}\b"
    rf"|\b(?<!\bto )(?<!\ba )(?<!\bde )(?<!\bfrom ){_SHORT}(?= \d{{1,2}}\b)"
)
MONTHS = {
    "january": 1,
    "jan": 1,
    "february": 2,
    "feb": 2,
    "march": 3,
    "mar": 3,
    "april": 4,
    "apr": 4,
    "may": 5,
    "june": 6,
    "jun": 6,
    "july": 7,
    "jul": 7,
    "august": 8,
    "aug": 8,
    "september": 9,
    "sept": 9,
    "sep": 9,
    "october": 10,
    "oct": 10,
    "november": 11,
    "nov": 11,
    "december": 12,
    "dec": 12,
    "enero": 1,
    "febrero": 2,
    "marzo": 3,
    "abril": 4,
    "mayo": 5,
    "junio": 6,
    "julio": 7,
    "agosto": 8,
    "septiembre": 9,
    "setiembre": 9,
    "octubre": 10,
    "noviembre": 11,
    "diciembre": 12,
    # Spanish abbreviations that are not also English ones ("3 ene", "15 dic").
    "ene": 1,
    "abr": 4,
    "ago": 8,
    "dic": 12,
}


def _alternation(words: dict[str, int]) -> str:
    return "(" + "|".join(sorted(words, key=len, reverse=True)) + ")"


WEEKDAY = _alternation(WEEKDAYS)
MONTH = _alternation(MONTHS)
ORD = r"(?:st|nd|rd|th|°|ero|ro)?"  # 1st; 1º (read as 1°: see normalize), 1ro, 1ero

# Frequent misspellings of the words the date rules look for. Longer words are also corrected
# by fuzzy matching (see _fix_typos); these are the short or far-off ones.
TYPOS = {
    "tmrw": "tomorrow",
    "tmr": "tomorrow",
    "tmw": "tomorrow",
    "tomoro": "tomorrow",
    "tomorow": "tomorrow",
    "tommorow": "tomorrow",
    "tommorrow": "tomorrow",
    "2morrow": "tomorrow",
    "2moro": "tomorrow",
    "nxt": "next",
    "thx": "thanks",
    "wknd": "weekend",
    "weeknd": "weekend",
    "manana": "mañana",
    "finde": "fin de semana",
    "bussiness": "business",
    "buisness": "business",
    "busines": "business",
    "nonstop": "non-stop",
    "retrun": "return",
    "retun": "return",
    "tix": "tickets",
    "ppl": "people",
}
FUZZY_WORDS = [
    "tomorrow",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "weekend",
    "january",
    "february",
    "september",
    "october",
    "november",
    "december",
    "business",
    "returning",
    "economy",
]

# Words that carry no trip detail; trimmed from the edges of place phrases.
FILLER_WORDS = """
search searching find show get give book booking look looking check me i im i'm we us you u
can could would like want wanna need needs please pls plz flight flights fly flying flyin
ticket tickets trip trips travel travelling traveling go going head heading a an the some any
cheap cheapest cheaper best good options option deals deal fares fare prices price airfare
for on in at is are there what how about hi hey hello ok okay yes so just also and then help
let's lets take leave leaving depart departing departure home back way
quiero queremos busco buscar buscame encuentra necesito vuelo vuelos billete billetes boleto
boletos pasaje pasajes ir viajar volar por favor un una unos unas en me
hola quisiera algun barato baratos myself q tal x mas more same but pero lo mismo
puedes puede podrias ayudar ayudarme ayudame ayuda
que como cual se
airport airports aeropuerto intl international city
instead actually change make it rather then no not sorry mejor cambia cambiar only just meant mean
around sometime approximately roughly sobre alrededor aproximadamente time
morning afternoon evening night noon midday early late tarde noche madrugada
thanks thank thx cheers gracias
now ahora
much does do did it cost costs have has got available availability
cuanto cuesta cuestan sale salen tienen tienes tiene hay disponible disponibilidad
"""
FILLER = frozenset(FILLER_WORDS.split())


def _strip_accents(text: str) -> str:
    return "".join(
        ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch)
    )


def _fix_typos(text: str) -> str:
    words = text.split(" ")
    fixed = []
    for word in words:
        if word in TYPOS:
            fixed.append(TYPOS[word])
            continue
        if len(word) >= 5 and word.isalpha() and word not in FUZZY_WORDS:
            cutoff = 84 if len(word) >= 6 else 88
            match = process.extractOne(word, FUZZY_WORDS, scorer=fuzz.ratio, score_cutoff=cutoff)
            if match:
                fixed.append(match[0])
                continue
        fixed.append(word)
    return " ".join(fixed)


CODE_PAIR = re.compile(r"\b([a-z]{3})-([a-z]{3})\b")
NOT_CODES = {"one", "non", "two", "six", "ten", "way", "day", "new", "get", "mid", "pre", "low"}


def _code_pair(match: re.Match[str]) -> str:
    if match.group(1) in NOT_CODES or match.group(2) in NOT_CODES:
        return match.group(0)
    return f"{match.group(1)} to {match.group(2)}"


# A keycap emoji ("1️⃣": the digit, an optional VS16, the combining enclosing keycap), which
# WhatsApp users answer numbered lists with.
KEYCAP = re.compile("([0-9#*])\ufe0f?\u20e3")
# A count written against its noun ("2ppl", "2adults 1kid", "3pax", "2personas").
GLUED_COUNT = re.compile(
    r"\b(\d{1,2})(?=(?:ppl|pax|people|persons?|adults?|kids?|child|children|infants?|bab(?:y|ies)|"
    r"tickets?|seats?|personas?|adultos?|ni[nñ]os?|ni[nñ]as?|bebes?|pasajeros?)\b)"
)


# A day glued to its month as airlines and agents write it ("12DEC", "Dec12", "12-Dec").
GLUED_DATE = re.compile(
    r"\b(?:(?P<d>\d{1,2})-?(?P<m>"
    + MONTH[1:-1]
    + r")|(?P<n>"
    + MONTH[1:-1]
    + r")-?(?P<e>\d{1,2})(?:st|nd|rd|th)?)\b"
)


def normalize(text: str) -> str:
    text = text.lower().replace("\u2019", "'")  # typographic apostrophe
    # One space for each run first: the arrow and dash rules below begin with \s* (\s+) and
    # read a whole run from every space in it, 0.15 s for a message of 4,000 line breaks.
    text = re.sub(r"\s+", " ", text)
    text = KEYCAP.sub(r"\1", text).replace("\U0001f51f", "10")  # "2️⃣" is 2, "🔟" 10
    # "w/ my wife", "w/o stops": the shorthand of "with" and "without".
    text = re.sub(r"\bw/o\b", "without", text)
    text = re.sub(r"\bw/(?=[a-z ]|$)", "with ", text)
    text = re.sub(r"\s*(?:->|=>|→|➡️?|⇒|—>|-->|>)\s*", " to ", text)
    text = re.sub(r"\s+[-\u2013\u2014]\s+", " to ", text)  # "London - Paris"
    text = CODE_PAIR.sub(_code_pair, text)  # "LHR-JFK"
    text = re.sub(r"[!?¿¡,;\"“”()\[\]*_]+|(?<!\d):|:(?!\d)", " ", text)  # "10:30" is kept
    text = re.sub(r"(?<=[a-z0-9])\.(?=\s|$)", " ", text)  # "fri." → "fri", "Dec 20." → "Dec 20"
    # The Spanish ordinal "1º" would become "1o" with the accents below.
    text = re.sub(r"(?<=\d)[ºª]", "°", text)
    text = _strip_accents(text.replace("ñ", "\x00")).replace("\x00", "ñ")
    text = re.sub(r"\s+", " ", text).strip()
    text = GLUED_COUNT.sub(r"\1 ", text)  # "2ppl", "2adults", "3pax"
    text = GLUED_DATE.sub(lambda m: f"{m['d'] or m['e']} {m['m'] or m['n']}", text)  # "12DEC"
    # "el primero de diciembre": the first day of a month is said as an ordinal in Spanish.
    text = re.sub(r"\bprimero(?= (?:de |del )?" + MONTH + r"\b)", "1", text)
    return _fix_typos(text)


def as_written(phrase: str, text: str) -> str | None:
    """``phrase`` (read from ``normalize(text)``) as the user wrote it in ``text``: "Córdoba"
    for "cordoba", "San José" for "san jose"; None where normalizing changed more than case,
    accents and spacing (a typo fixed, a symbol read as "to")."""
    folded, origin = [], []  # each folded character, and the index of its original one
    for index, ch in enumerate(text):
        lower = ch.lower().replace("\u2019", "'")
        for part in lower if lower == "ñ" else _strip_accents(lower):
            folded.append(part)
            origin.append(index)
    words = phrase.split()
    if not words:
        return None
    found = re.search(r"\s+".join(map(re.escape, words)), "".join(folded))
    if found is None:
        return None
    # To the end of the last grapheme: an accent written after its letter ("e" + U+0301)
    # folds to nothing, and is still part of what the user wrote.
    last = regex.match(r"\X", text, pos=origin[found.end() - 1])
    end = last.end() if last else origin[found.end() - 1] + 1
    return " ".join(text[origin[found.start()] : end].split())


# Emoji and other pictographs (with their joiners and variation selectors), which WhatsApp
# users put around places ("✈️ NYC", "🇫🇷 Paris"): no part of a name. Not "°" (see normalize).
PICTOGRAPHS = frozenset(("So", "Sk", "Cf", "Co", "Cs"))


def _without_pictographs(text: str) -> str:
    dropped = {ch for ch in text if unicodedata.category(ch) in PICTOGRAPHS} - {"°"}
    kept = (" " if ch in dropped or ch in "\ufe0e\ufe0f" else ch for ch in text)
    return re.sub(r"\s+", " ", "".join(kept)).strip()


def number(word: str) -> int | None:
    if word.isdecimal() and len(word) <= 6:  # int() refuses "²" and over 4300 digits
        return int(word)
    return NUMBER_WORDS.get(word)


# --- dates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DateContext:
    today: date
    day_first: bool  # 03/04 is 3 April (most locales) or March 4 (en-US)


def _next_weekday(today: date, weekday: int, *, skip_today: bool = True) -> date:
    days = (weekday - today.weekday()) % 7
    if days == 0 and skip_today:
        days = 7
    return today + timedelta(days=days)


def weekday_after(value: date, departure: date) -> date:
    """The first date with ``value``'s weekday after ``departure`` (a return, so never the
    same day: "Friday back Friday" is a week)."""
    return departure + timedelta(days=(value.weekday() - departure.weekday()) % 7 or 7)


def day_after(value: date, departure: date) -> date:
    """The first date with ``value``'s day of the month after ``departure`` (a return written
    as a day alone: "Dec 28 back on the 4th" is 4 January)."""
    return _day_of_month(departure + timedelta(days=1), value.day) or value


def _day_of_month(today: date, day: int) -> date | None:
    """The next date with this day of the month, this month if still to come."""
    year, month = today.year, today.month
    for _ in range(13):
        if day <= calendar.monthrange(year, month)[1]:
            candidate = date(year, month, day)
            if candidate >= today:
                return candidate
        month = 1 if month == 12 else month + 1
        year = year + 1 if month == 1 else year
    return None


def _absolute(day: int, month: int, year: int | None, today: date) -> date | NoSuchDate | None:
    """A calendar date; without a year, the next one from today (prefer the future), unless
    that is past the search horizon: "28 Dec" written on 29 Dec means the day that has just
    passed (and is answered so), not 28 December next year (answered "up to a year ahead").
    A day the month does not have that year is a NoSuchDate: the year without a 29 February
    is the one meant ("29 Feb" in November 2026 is February 2027), not the next leap year."""
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    if year is not None:
        year = year + 2000 if year < 100 else year
        if not 1 <= year <= 9999:
            return None
    else:
        year = today.year if (month, day) >= (today.month, today.day) else today.year + 1
        ahead = date(year, month, min(day, calendar.monthrange(year, month)[1]))
        if year > today.year and (ahead - today).days > MAX_DAYS_AHEAD:
            year = today.year
    if day > calendar.monthrange(year, month)[1]:
        return NoSuchDate(day, month, year)
    return date(year, month, day)


# The longest phrase dateparser is asked about: a date is a few words ("the 2nd of next
# month"), and dateparser's time grows with the text, up to 0.2 s of the worker's event loop
# for a 4,000-character phrase ("a-a-a-…") that the rules left as a lone place.
DATEPARSER_LIMIT = 60


def _parse_with_dateparser(text: str, ctx: DateContext, order: str = "") -> date | None:
    """dateparser relative to the business's today, preferring the future."""
    if len(text) > DATEPARSER_LIMIT:
        return None
    return _dateparser_date(text, ctx.today, order or ("DMY" if ctx.day_first else "MDY"))


# dateparser costs ~0.2 ms a call and users write the same few hundred date phrases ("next
# friday", "15 march"): its answer depends only on these arguments, so it is memoized.
@functools.lru_cache(maxsize=4096)
def _dateparser_date(text: str, today: date, order: str) -> date | None:
    settings: dict[str, Any] = {
        "PREFER_DATES_FROM": "future",
        # Midnight, so a date written for today counts as today, not as already past.
        "RELATIVE_BASE": datetime(today.year, today.month, today.day),
        "DATE_ORDER": order,
        "REQUIRE_PARTS": ["day"],
    }
    parsed = dateparser.parse(text, languages=["en", "es"], settings=settings)
    return parsed.date() if parsed else None


def _numeric(a: str, b: str, y: str | None, ctx: DateContext) -> date | NoSuchDate | None:
    first, second = int(a), int(b)
    if first > 12 or (ctx.day_first and second <= 12):
        day, month = first, second
    else:
        month, day = first, second
    if month > 12:
        day, month = month, day
    return _absolute(day, month, int(y) if y else None, ctx.today)


# Each rule: (pattern, function(match, ctx) -> date | None, or a (date, date) range).
DateValue = date | tuple[date, date] | NoSuchDate | None


def _weekend(today: date, offset_weeks: int) -> date:
    saturday = today if today.weekday() == 5 else _next_weekday(today, 5)
    if today.weekday() == 6:  # on a Sunday, "this weekend" is today
        saturday = today if offset_weeks == 0 else _next_weekday(today, 5)
        return saturday
    return saturday + timedelta(days=7 * offset_weeks)


def _in_units(n: str, unit: str, today: date) -> date | None:
    count = number(n)
    if count is None:
        return None
    if unit.startswith(("week", "seman")):
        return today + timedelta(days=7 * count)
    if unit.startswith(("month", "mes")):
        month = today.month - 1 + count
        year = today.year + month // 12
        day = min(today.day, calendar.monthrange(year, month % 12 + 1)[1])
        return date(year, month % 12 + 1, day)
    return today + timedelta(days=count)


def _m(match: re.Match[str], name: str) -> str:
    return match.group(name) or ""


DateRule = Callable[[re.Match[str], "DateContext"], DateValue]
DATE_RULES: list[tuple[re.Pattern[str], DateRule]] = []


def _rule(pattern: str) -> Callable[[DateRule], DateRule]:
    def register(func: DateRule) -> DateRule:
        DATE_RULES.append((re.compile(pattern), func))
        return func

    return register


@_rule(r"\b(?P<y>\d{4})(?P<sep>[-/.])(?P<m>\d{1,2})(?P=sep)(?P<d>\d{1,2})\b")  # also 2026/12/05
def _iso(match: re.Match[str], ctx: DateContext) -> DateValue:
    return _absolute(int(match["d"]), int(match["m"]), int(match["y"]), ctx.today)


# day range within one month: "3-10 march", "3 to 10 march", "del 3 al 10 de marzo"
@_rule(
    r"\b(?:from |del |de )?(?:the )?(?P<d1>\d{1,2})" + ORD + r" ?(?:-|to|until|till|al|a) ?"
    r"(?:the )?(?P<d2>\d{1,2})" + ORD + r"(?: of| de)? " + MONTH + r"\b"
)
def _day_range(match: re.Match[str], ctx: DateContext) -> DateValue:
    return _range(int(match["d1"]), int(match["d2"]), MONTHS[match.group(3)], ctx)


def _range(first_day: int, second_day: int, month: int, ctx: DateContext) -> DateValue:
    """Two days of one month. Backwards ("10-5 dec") is still the trip written, so the user
    is told the return is before the departure rather than that the date is unreadable."""
    first = _absolute(first_day, month, None, ctx.today)
    if not isinstance(first, date):
        return first
    second = _absolute(second_day, month, first.year, ctx.today)
    return (first, second) if isinstance(second, date) else second


# "march 3-10", "march 3 to 10"
@_rule(
    r"\b" + MONTH + r" (?:the )?(?P<d1>\d{1,2})" + ORD + r" ?(?:-|to|until|till) ?(?:the )?"
    r"(?P<d2>\d{1,2})" + ORD + r"\b(?! ?(?:days|nights|adults|people))"
)
def _month_range(match: re.Match[str], ctx: DateContext) -> DateValue:
    return _range(int(match["d1"]), int(match["d2"]), MONTHS[match.group(1)], ctx)


# 12/24, 24.12, 24/12/2026, and with hyphens when the year is written (5-12-2026; "5-12" alone
# may be a range of days).
NUMERIC_DATE = (
    r"\b(?P<a>\d{1,2})(?P<sep>[/.]|-(?=\d{1,2}-\d{2,4}\b))(?P<b>\d{1,2})"
    r"(?:(?P=sep)(?P<y>\d{4}|\d{2}))?\b"
)


def _numeric_order(text: str, ctx: DateContext) -> DateContext:
    """The order of the message's numeric dates: the locale's, unless one of them can only be
    read the other way ("28/12 - 4/1" written to an en-US business is 4 January, not 1 April)."""
    for match in re.finditer(NUMERIC_DATE, text):
        first, second = int(match["a"]), int(match["b"])
        if max(first, second) > 31 or _a_time(match):
            continue  # no date ("9.45", "13.45": a time written with a dot)
        if first > 12 >= second or second > 12 >= first:
            return replace(ctx, day_first=first > 12)
    return ctx


def _a_time(match: re.Match[str]) -> bool:
    """Whether a numeric date without a year may be a time written with a dot ("13.45")."""
    return (
        match["sep"] == "."
        and not match["y"]
        and len(match["b"]) == 2
        and int(match["a"]) <= 23
        and int(match["b"]) <= 59
    )


@_rule(NUMERIC_DATE)
def _numeric_rule(match: re.Match[str], ctx: DateContext) -> DateValue:
    # The locale's order, or the only one possible (24/12).
    return _numeric(match["a"], match["b"], match["y"], ctx)


# "3 march", "3rd of march", "3 de marzo", "the 3rd of march 2027"
@_rule(
    r"\b(?:the )?(?P<d>\d{1,2})"
    + ORD
    + r"(?: of| de)? "
    + MONTH
    + r"\b(?:,? (?:de )?(?P<y>\d{4}))?"
)
def _day_month(match: re.Match[str], ctx: DateContext) -> DateValue:
    return _calendar(int(match["d"]), MONTHS[match.group(2)], match["y"], ctx)


# "march 3", "march 3rd", "march the 3rd, 2027"
@_rule(r"\b" + MONTH + r" (?:the )?(?P<d>\d{1,2})" + ORD + r"\b(?:,? (?P<y>\d{4}))?")
def _month_day(match: re.Match[str], ctx: DateContext) -> DateValue:
    return _calendar(int(match["d"]), MONTHS[match.group(1)], match["y"], ctx)


def _calendar(day: int, month: int, year: str | None, ctx: DateContext) -> DateValue:
    """A day and month (in whichever language or order they were written) in the given year,
    or the next occurrence from today (see _absolute)."""
    return _absolute(day, month, int(year) if year else None, ctx.today)


# "next month on the 3rd", "the 3rd of next month", "el 3 del mes que viene"
@_rule(
    r"\b(?:next month(?: on)? (?:the )?(?P<a>\d{1,2})"
    + ORD
    + r"|(?:on )?(?:the )?(?P<b>\d{1,2})"
    + ORD
    + r" (?:of )?next month|(?:el )?(?P<c>\d{1,2}) del mes que viene)\b"
)
def _next_month_day(match: re.Match[str], ctx: DateContext) -> DateValue:
    day = int(match["a"] or match["b"] or match["c"])
    month = ctx.today.month % 12 + 1
    return _absolute(day, month, ctx.today.year + (1 if month == 1 else 0), ctx.today)


@_rule(r"\b(?:next month|el mes que viene|el proximo mes|el mes proximo)\b")
def _next_month(match: re.Match[str], ctx: DateContext) -> DateValue:
    return _in_units("1", "month", ctx.today)


@_rule(r"\b(?:day after tomorrow|pasado mañana)\b")
def _after_tomorrow(match: re.Match[str], ctx: DateContext) -> DateValue:
    return ctx.today + timedelta(days=2)


@_rule(r"\b(?:tomorrow|mañana)\b")
def _tomorrow(match: re.Match[str], ctx: DateContext) -> DateValue:
    return ctx.today + timedelta(days=1)


@_rule(r"\b(?:today|tonight|hoy|esta noche)\b")
def _today(match: re.Match[str], ctx: DateContext) -> DateValue:
    return ctx.today


# Days gone by, read so that they are said to have passed rather than taken for the coming
# ones ("last Friday" is not next Friday) or left out of a request ("NYC to London yesterday").
@_rule(r"\b(?:(?:the )?day before yesterday|anteayer|antes de ayer)\b")
def _before_yesterday(match: re.Match[str], ctx: DateContext) -> DateValue:
    return ctx.today - timedelta(days=2)


@_rule(r"\b(?:yesterday|ayer)\b")
def _yesterday(match: re.Match[str], ctx: DateContext) -> DateValue:
    return ctx.today - timedelta(days=1)


# "last Friday", "el viernes pasado": the latest one before today (not "last Friday of May").
@_rule(
    r"\b(?:(?:on )?last " + WEEKDAY + r"\b(?! (?:of|in)\b)|(?:el )?" + WEEKDAY + r" pasado\b"
    r"(?! mañana))"
)
def _last_weekday(match: re.Match[str], ctx: DateContext) -> DateValue:
    weekday = WEEKDAYS[match.group(1) or match.group(2)]
    return ctx.today - timedelta(days=(ctx.today.weekday() - weekday - 1) % 7 + 1)


# "the week after next": its Monday, as "next week" is next Monday.
@_rule(r"\b(?:the )?week after next\b")
def _week_after_next(match: re.Match[str], ctx: DateContext) -> DateValue:
    return _next_weekday(ctx.today, 0) + timedelta(days=7)


@_rule(
    r"\b(?:in|en|dentro de) (?P<n>" + NUM[1:-1] + r") "
    r"(?P<u>days?|weeks?|months?|dias?|semanas?|mes|meses)\b"
)
def _in_n(match: re.Match[str], ctx: DateContext) -> DateValue:
    return _in_units(match["n"], match["u"], ctx.today)


# "the first weekend of December", "el último fin de semana de diciembre": its Saturday, as
# "this weekend" is (not this weekend, which the words "weekend" alone would be).
@_rule(
    r"\b(?:the |el )?(?P<nth>first|1st|second|2nd|third|3rd|fourth|4th|last|primer|segundo|"
    r"tercer|cuarto|ultimo) (?:weekend|fin de semana)(?: of| de| del)? "
    r"(?:(?P<this>(?:the |this |este |el )?(?:month|mes))|" + MONTH + r")\b"
)
def _weekend_of_month(match: re.Match[str], ctx: DateContext) -> DateValue:
    month = ctx.today.month if match["this"] else MONTHS[match.group(3)]
    nth = {"second": 2, "2nd": 2, "segundo": 2, "third": 3, "3rd": 3, "tercer": 3}
    nth |= {"fourth": 4, "4th": 4, "cuarto": 4}
    for year in (ctx.today.year, ctx.today.year + 1):
        days = calendar.monthrange(year, month)[1]
        saturdays = [d for d in range(1, days + 1) if date(year, month, d).weekday() == 5]
        last = match["nth"] in ("last", "ultimo")
        saturday = date(year, month, saturdays[-1 if last else nth.get(match["nth"], 1) - 1])
        if saturday >= ctx.today:
            return saturday
    return None


# A long weekend ("the long weekend", "el finde largo") is read as its Saturday too: "long"
# and "largo" are no places ("for the long weekend" flew to Long, Alaska, not Miami).
@_rule(
    r"\b(?:next (?:long )?weekend|(?:el )?(?:proximo|siguiente) fin de semana(?: largo)?|"
    r"(?:el )?fin de semana(?: largo)? (?:que viene|proximo))\b"
)
def _next_weekend(match: re.Match[str], ctx: DateContext) -> DateValue:
    return _weekend(ctx.today, 1)


@_rule(
    r"\b(?:(?:this|este) (?:coming )?(?:long )?(?:weekend|fin de semana(?: largo)?)|"
    r"(?:the )?(?:long )?weekend|(?:el )?fin de semana(?: largo)?)\b(?! que viene)"
)
def _this_weekend(match: re.Match[str], ctx: DateContext) -> DateValue:
    return _weekend(ctx.today, 0)


@_rule(
    r"\b(?:next week|(?:la )?(?:proxima|siguiente) semana|(?:la )?semana (?:que viene|proxima))\b"
)
def _next_week(match: re.Match[str], ctx: DateContext) -> DateValue:
    return _next_weekday(ctx.today, 0)


# The words before a weekday ("on this coming Friday"), three at most: unbounded, each weekday
# rule read a whole run of them ("on on on …", "el el …") from every position in it, and a
# 4,000-character message held the worker's event loop for 0.13 s.
_WEEKDAY_BEFORE = r"\b(?:(?:on|this|next|coming|the|following|el|este|proximo) ){0,3}"


# "Friday after next", and in British English "Friday week": the Friday after the coming one
# (from today, even as a return).
@_rule(r"\b(?:(?:on|this|the) ){0,3}" + WEEKDAY + r" (?:after next|week)\b")
def _weekday_after_next(match: re.Match[str], ctx: DateContext) -> DateValue:
    return _next_weekday(ctx.today, WEEKDAYS[match.group(1)]) + timedelta(days=7)


# "el sábado 5", "viernes día 4": the day of the month says which one. (With an ordinal or a
# month, "Saturday the 5th", WEEKDAY_WITH_DATE below has already left only the date.)
@_rule(
    _WEEKDAY_BEFORE + WEEKDAY + r",? "
    r"(?:the |el |dia )?(?P<d>\d{1,2})" + ORD + r"\b"
    # not a count or a time: "Friday 2 adults", "viernes 3 personas", "Friday 10am", "10:30"
    r"(?! ?(?:adult|people|person|passenger|pax|travel|ticket|seat|of us|persona|pasajer|"
    r"billete|boleto|pasaje|viajer|plaza|de nosotros|am\b|pm\b|h\b|hrs?\b|[:.]?\d))"
)
def _weekday_day(match: re.Match[str], ctx: DateContext) -> DateValue:
    day, weekday = int(match["d"]), WEEKDAYS[match.group(1)]
    if not 1 <= day <= 31:
        return None
    first = candidate = _day_of_month(ctx.today, day)
    # Within the next three months the day falls on that weekday; else the weekday was a slip.
    for _ in range(2):
        if candidate is None or candidate.weekday() == weekday:
            break
        candidate = _day_of_month(candidate + timedelta(days=1), day)
    return candidate if candidate is not None and candidate.weekday() == weekday else first


@_rule(
    _WEEKDAY_BEFORE + WEEKDAY + r"\b"
    r"(?: (?:que viene|proximo))?"
)
def _weekday(match: re.Match[str], ctx: DateContext) -> DateValue:
    return _next_weekday(ctx.today, WEEKDAYS[match.group(1)])


# "on the 5th", "the 5th", "5th", "el 5", "el día 5"
@_rule(
    r"\b(?:(?:on )?the (?P<a>\d{1,2})" + ORD + r"|(?P<b>\d{1,2})(?:st|nd|rd|th)|"
    r"el (?:dia )?(?P<c>\d{1,2})(?! (?:adult|person|persona|pasajer|billete|noche|dia|seman)))"
    r"\b"
)
def _nth(match: re.Match[str], ctx: DateContext) -> DateValue:
    day = int(match["a"] or match["b"] or match["c"])
    return _day_of_month(ctx.today, day) if 1 <= day <= 31 else None


# Holidays that are one day: "Christmas Eve" is 24 December. (Christmas or New Year alone
# are periods: see find_period.)
HOLIDAYS = {
    "christmas eve": (24, 12),
    "xmas eve": (24, 12),
    "nochebuena": (24, 12),
    "christmas day": (25, 12),
    "xmas day": (25, 12),
    "dia de navidad": (25, 12),
    "new year's eve": (31, 12),
    "new years eve": (31, 12),
    "new year eve": (31, 12),
    "nochevieja": (31, 12),
    "new year's day": (1, 1),
    "new years day": (1, 1),
    "dia de año nuevo": (1, 1),
    "dia de ano nuevo": (1, 1),
    "dia de reyes": (6, 1),
    "valentine's day": (14, 2),
    "valentines day": (14, 2),
    "dia de san valentin": (14, 2),
    # Said alone, as often as with "Day" ("for Valentine's"; not "Valentine", a town in Nebraska).
    "valentine's": (14, 2),
    "valentines": (14, 2),
    "san valentin": (14, 2),
    "halloween": (31, 10),
}


@_rule(r"\b(?:on |el |the )?" + _alternation({name: 0 for name in HOLIDAYS}) + r"\b")
def _holiday(match: re.Match[str], ctx: DateContext) -> DateValue:
    day, month = HOLIDAYS[match.group(1)]
    return _absolute(day, month, None, ctx.today)


# Month names alone ("in march") are too vague for a flight search; dateparser catches the
# rest ("next month", written-out forms) only when the rules above found nothing.


def easter(year: int) -> date:
    """Easter Sunday (Gregorian; the anonymous algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = divmod(b, 4)
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    m = (32 + 2 * e + 2 * i - h - k) % 7
    month, day = divmod(h + m - 7 * ((a + 11 * h + 22 * m) // 451) + 114, 31)
    return date(year, month, day + 1)


def thanksgiving(year: int) -> date:
    """US Thanksgiving: the fourth Thursday of November."""
    first = date(year, 11, 1)
    return first + timedelta(days=(3 - first.weekday()) % 7 + 21)


# A Spanish "puente" (a holiday made into a long weekend) named by its month or its holiday: the
# day of the month of the holiday, so its last day (and whether this year's is over) is known.
PUENTES = {3: 19, 5: 1, 8: 15, 10: 12, 11: 1, 12: 8}
PUENTE_NAMES = {"constitucion": 12, "inmaculada": 12, "todos los santos": 11, "pilar": 10}
PUENTE_NAMES |= {"san jose": 3, "asuncion": 8}

# Meteorological seasons as the northern hemisphere has them: the month each begins (summer is
# June to August). South of the equator they are the other way round: the dialogue moves a
# season there when the business's time zone is a southern one (Period.in_south).
SEASONS = {"spring": 3, "summer": 6, "autumn": 9, "winter": 12}
SEASON_WORDS = {"primavera": "spring", "verano": "summer", "fall": "autumn", "otoño": "autumn"}
SEASON_WORDS |= {"otono": "autumn", "invierno": "winter"} | {name: name for name in SEASONS}


def season(name: str, today: date, *, after: bool = False, south: bool = False) -> Period:
    """The season ``name`` under way or coming; with ``after`` ("next summer"), the one after
    it if it has already begun (in July, next summer is next year's)."""
    first = SEASONS[name] if not south else (SEASONS[name] + 5) % 12 + 1
    for year in (today.year - 1, today.year, today.year + 1):
        period = Period(name, first, year, 1 if after else 0)
        if period.last_day() >= today:
            if after and date(year, first, 1) <= today:
                return Period(name, first, year + 1, 1)
            return period
    raise AssertionError("a season ends within a year")


@dataclass(frozen=True)
class Period:
    """A stretch of days the user named instead of a day: "end of the month", "mid
    December", "a principios de enero", "first week of December", "for Christmas". Not a
    date to search: the user is asked which day, the period named in the question."""

    kind: str  # month, early, mid, end, week (with ``week``), last_week, christmas, new_year,
    # holidays (between Christmas and New Year), half (first or second, in ``week``), easter,
    # thanksgiving, reyes (Epiphany, 6 January), puente (a Spanish holiday's long weekend), or a
    # season (spring, summer, autumn, winter: SEASONS)
    month: int  # a season's first month
    year: int
    week: int = 0  # 1-4 for kind "week"; for a season, 1 if it was "next summer"
    leg: str = "depart"  # or "return": "back early January"

    def last_day(self) -> date:
        """The period's last day in its month: "early November" is over on the 11th."""
        if self.kind == "easter":
            return easter(self.year) + timedelta(days=1)  # Easter Monday
        if self.kind == "thanksgiving":
            return thanksgiving(self.year) + timedelta(days=4)  # the Monday after
        if self.kind == "reyes":
            return date(self.year, 1, 6)
        if self.kind == "puente" and self.month in PUENTES:
            # The holiday and the weekend after it (a Friday holiday's Sunday).
            return date(self.year, self.month, PUENTES[self.month]) + timedelta(days=2)
        if self.kind in SEASONS:  # three months: winter runs into the next year
            month = (self.month + 1) % 12 + 1
            year = self.year + (month < self.month)
            return date(year, month, calendar.monthrange(year, month)[1])
        days = calendar.monthrange(self.year, self.month)[1]
        half = 15 if self.week == 1 else days
        end = {"early": 10, "mid": 20, "week": 7 * self.week, "half": half}.get(self.kind, days)
        return date(self.year, self.month, min(end, days))

    def day(self, day: int) -> date | NoSuchDate | None:
        """The day of the month written in answer to "Which day <period>?": that day of the
        period's month ("the 3rd" around New Year is 3 January). None for a season: a day
        alone does not say which of its months."""
        if self.kind in SEASONS:
            return None
        year, month = self.year, self.month
        if self.kind == "new_year" and day <= 7:
            year, month = year + 1, 1
        if day > calendar.monthrange(year, month)[1]:
            return NoSuchDate(day, month, year)
        return date(year, month, day)

    def months(self) -> list[date]:
        """The first day of each month the period is in (three for a season)."""
        end = self.last_day()
        first, months = date(self.year, self.month, 1), []
        while first <= end:
            months.append(first)
            first = (first + timedelta(days=31)).replace(day=1)
        return months

    def example(self, today: date) -> date:
        """A day of the period to show as an example answer: the 15th of one of its months
        still to come, or its last day."""
        later = [day for day in (m.replace(day=15) for m in self.months()) if day >= today]
        return later[len(later) // 2] if len(later) == 3 else (later or [self.last_day()])[0]

    def not_before(self, day: date) -> Period:
        """This period, or the next year's if it is over by ``day``: a return's period is
        after its departure ("march 3 back early january" is January of the year after)."""
        period = self
        while period.last_day() < day:
            year = period.year + 1
            month = easter(year).month if period.kind == "easter" else period.month
            period = replace(period, year=year, month=month)
        return period

    def in_south(self, today: date) -> Period:
        """This season as the southern hemisphere has it (summer from December); any other
        period as it is."""
        if self.kind not in SEASONS:
            return self
        south = season(self.kind, today, after=bool(self.week), south=True)
        return replace(south, leg=self.leg)

    def as_state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "month": self.month,
            "year": self.year,
            "week": self.week,
            "leg": self.leg,
        }

    @classmethod
    def from_state(cls, value: Any) -> Period | None:
        if not isinstance(value, dict):
            return None
        try:
            period = cls(
                str(value["kind"]),
                int(value["month"]),
                int(value["year"]),
                int(value["week"]),
                "return" if value.get("leg") == "return" else "depart",
            )
            period.last_day()
        except (KeyError, TypeError, ValueError, calendar.IllegalMonthError):
            return None
        return period


# At most three words before a period ("for around the end of the month"): unbounded, each of
# the period rules backtracked through every run of such words at every position, and a 4,000-
# character message of "a a a …" (or "en en …") took 1.7 s of the worker's event loop.
_BEFORE = (
    r"\b(?:(?:in|at|by|for|around|towards|during|sometime|over|en|a|al|para|hacia|durante|"
    r"por) ){0,3}"
)
_THE_MONTH = r"(?:the |this |este |el )?(?:month|mes)"
_NEXT_MONTH = r"(?:(?:the )?next month|(?:el )?(?:mes que viene|proximo mes|mes proximo))"
_NEXT_YEAR = r"(?:next year|(?:el )?(?:año|ano) que viene|(?:el )?proximo (?:año|ano))"
# A month name not followed by a day ("march 3" is a date, read by the date rules), maybe with
# the year: "enero del año que viene".
_A_MONTH = MONTH + r"\b(?! ?(?:the )?\d)(?P<nexty> (?:of |del |de )?" + _NEXT_YEAR + r")?"
_WHICH = (
    r"(?:(?P<next>" + _NEXT_MONTH + r")|(?P<this>" + _THE_MONTH + r")|(?:the )?" + _A_MONTH + r")"
)
_OF = r"(?:-| (?:of |del? )?)"
PERIOD_RULES: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(
            r"\b(?:between|entre) (?:christmas|xmas|navidad(?:es)?) (?:and|y) (?:(?:the )?new "
            r"year(?:'?s)?+(?: eve| day)?|año nuevo|ano nuevo|nochevieja|fin de año)\b"
        ),
        "holidays",
    ),
    (
        re.compile(
            _BEFORE
            + r"(?:the )?(?:end|finales|fines|final|fin) (?:of the |de |del )?(?:year|año|ano)\b"
        ),
        "year_end",
    ),
    (
        re.compile(
            _BEFORE
            + r"(?:the )?(?:beginning|start|early|principios|inicios|comienzos) (?:of |del |de )?"
            + _NEXT_YEAR
        ),
        "year_start",
    ),
    (
        re.compile(
            _BEFORE
            + r"(?:the |la )?(?P<nth>first|second|primera|segunda) (?:half|quincena)"
            + _OF
            + _WHICH
        ),
        "half",
    ),
    (
        re.compile(
            _BEFORE
            + r"(?:the )?(?:end|ending|finales|fines|final|fin|late|later|last days?)"
            + _OF
            + _WHICH
        ),
        "end",
    ),
    (
        re.compile(
            _BEFORE
            + r"(?:the )?(?:beginning|start|early|principios|inicios|comienzos|primeros dias|"
            r"primeros)" + _OF + _WHICH
        ),
        "early",
    ),
    (re.compile(_BEFORE + r"(?:the )?(?:middle|mid|mediados|mitad)" + _OF + _WHICH), "mid"),
    (
        re.compile(
            _BEFORE
            + r"(?:the |la )?(?P<nth>first|1st|second|2nd|third|3rd|fourth|4th|last|primera|"
            r"segunda|tercera|cuarta|ultima) (?:week|semana)" + _OF + _WHICH
        ),
        "week",
    ),
    # Not "Christmas Eve" or "día de Navidad": those are days (HOLIDAYS, read as dates).
    (
        re.compile(_BEFORE + r"(?<!dia de )(?:christmas|xmas|navidad(?:es)?)\b(?! (?:eve|day)\b)"),
        "christmas",
    ),
    (
        re.compile(
            _BEFORE + r"(?<!dia de )(?:new year(?:'?s)?+|año nuevo|ano nuevo)\b(?! (?:eve|day)\b)"
        ),
        "new_year",
    ),
    # Not "Isla de Pascua" (Easter Island, a place).
    (re.compile(_BEFORE + r"(?:easter|holy week|semana santa|(?<!isla de )pascua)\b"), "easter"),
    # "el puente de diciembre", "el puente de la Constitución", "el puente de mayo".
    (
        re.compile(
            _BEFORE
            + r"(?:the |el )?puente (?:de |del )(?:(?:la |el )?(?P<named>"
            + "|".join(PUENTE_NAMES)
            + r")|"
            + MONTH
            + r")\b"
        ),
        "puente",
    ),
    # "en Reyes", "para Reyes", "por los Reyes Magos": around 6 January. Not "a Reyes" or "de
    # Reyes" (Reyes, Bolivia, a place), nor "el día de Reyes" (a day: HOLIDAYS).
    (
        # Three words at most before it, as _BEFORE.
        re.compile(
            r"\b(?:(?:en|para|por|durante|for|over|around) ){1,3}(?:los )?reyes(?: magos)?\b"
        ),
        "reyes",
    ),
    (re.compile(_BEFORE + r"(?:thanksgiving|accion de gracias)\b"), "thanksgiving"),
    # "this summer", "next winter", "in the fall", "el verano que viene", "en primavera". "Fall"
    # only after a word that makes it the season; "Big Spring" (Texas) is a place.
    (
        re.compile(
            _BEFORE + r"(?:the |this |este |esta |el |la |(?P<after>(?:the )?next |(?:el |la )?"
            r"(?:proximo|proxima|siguiente) ))?(?<!big )(?P<season>spring|summer|autumn|winter|"
            r"primavera|verano|otoño|otono|invierno|(?:(?<=the )|(?<=this )|(?<=next )|"
            r"(?<=in ))fall)\b(?P<later> (?:que viene|proximo|proxima|siguiente)\b)?"
        ),
        "season",
    ),
    # Three words at most before it, as _BEFORE ("en en en …" took 20 ms a rule).
    (
        re.compile(
            r"\b(?:(?:in|for|during|around|en|para|durante) ){1,3}(?:the month of |el mes de )?"
            + _A_MONTH
        ),
        "month",
    ),
]
_NTH = {"first": 1, "1st": 1, "primera": 1, "second": 2, "2nd": 2, "segunda": 2}
_NTH |= {"third": 3, "3rd": 3, "tercera": 3, "fourth": 4, "4th": 4, "cuarta": 4}


def find_period(text: str, today: date) -> tuple[str, Period | None]:
    """The first period the text names, removed from it (so "a finales de mes" is not read as
    the place "finales", nor "for christmas" as a destination)."""
    for pattern, kind in PERIOD_RULES:
        match = pattern.search(text)
        if match is None:
            continue
        groups = match.groupdict()
        next_year = bool(groups.get("nexty")) or kind == "year_start"
        first = Period(kind, 1, today.year)
        if kind == "season":
            kind = SEASON_WORDS[groups["season"]]
            first = season(kind, today, after=bool(groups["after"] or groups["later"]))
            month = first.month
        elif kind in ("easter", "thanksgiving"):
            day = easter if kind == "easter" else thanksgiving
            first = Period(kind, day(today.year).month, today.year)
            if first.last_day() < today:
                first = Period(kind, day(today.year + 1).month, today.year + 1)
            month = first.month
        elif kind == "year_end":
            kind, month = "end", 12
        elif kind == "year_start":
            kind, month = "early", 1
        elif kind in ("christmas", "new_year", "holidays"):
            month = 12
        elif kind == "reyes":
            month = 1
        elif kind == "puente":
            named = groups.get("named")
            month = PUENTE_NAMES[named] if named else MONTHS[match.group(2)]
        elif groups.get("this"):
            month = today.month
        elif groups.get("next"):
            month = today.month % 12 + 1
        else:
            month = next(MONTHS[g] for g in match.groups() if g in MONTHS)
        week = first.week if kind in SEASONS else 0
        if kind == "half":
            week = 2 if groups["nth"] in ("second", "segunda") else 1
        if kind == "week":
            week = _NTH.get(groups["nth"] or "", 0)
            kind = "week" if week else "last_week"
        # "back early January", "y vuelta a principios de enero": the return's period.
        before = text[: match.start()]
        back = re.search(r"\b" + RETURN_MARK + r"(?: on| el| the| a| en| in)?$", before.rstrip())
        leg = "return" if back else "depart"
        if back:
            before = before[: back.start()]
        year = today.year + (1 if groups.get("next") and month == 1 else 0)
        if next_year:
            year = today.year + 1
        if kind in ("easter", "thanksgiving") or kind in SEASONS:
            year = first.year
        period = Period(kind, month, year, week, leg)
        if period.last_day() < today and groups.get("this"):
            # "a primeros de mes" once this month's beginning has passed: next month's.
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
            period = Period(kind, month, year, week, leg)
        elif period.last_day() < today:
            period = Period(kind, month, year + 1, week, leg)
        return before + " " + text[match.end() :], period
    return text, None


@dataclass
class _Found:
    value: date | tuple[date, date] | None
    weekday: bool = False  # "Sunday": the next one after whatever it is relative to
    day_only: bool = False  # "the 5th": a day of the month alone


# A weekday written with its date ("Friday the 4th", "fri 4 dec", "Friday 12/4") names that
# date: the weekday alone would be the coming one, and the date a second, ignored one.
WEEKDAY_WITH_DATE = re.compile(
    r"\b" + WEEKDAY + r",? (?=(?:the )?\d{1,2}(?:st|nd|rd|th|º|°)\b|the \d{1,2}\b|"
    r"\d{1,2}(?:st|nd|rd|th)? (?:of |de )?" + MONTH + r"\b|" + MONTH + r" (?:the )?\d{1,2}\b|"
    r"\d{1,2}[/.]\d{1,2}\b)"
)


def find_dates(text: str, ctx: DateContext) -> tuple[str, list[_Found]]:
    """Replace each date expression with a placeholder "@dN" and return the values."""
    found: list[_Found] = []
    text = WEEKDAY_WITH_DATE.sub(" ", text)

    for pattern, func in DATE_RULES:

        def replace(match: re.Match[str], func: Any = func) -> str:
            found.append(_Found(func(match, ctx), weekday=func is _weekday, day_only=func is _nth))
            return f" @d{len(found) - 1} "

        text = pattern.sub(replace, text)
    return re.sub(r"\s+", " ", text).strip(), found


# --- the other slots ---------------------------------------------------------------------

TRAVELLER_NOUNS = (
    r"(?:adults?|people|persons?|passengers?|pax|travell?ers?|tickets?|seats?|"
    r"adultos?|personas?|pasajeros?|billetes?|boletos?|pasajes?|viajeros?|plazas?)\b"
)
COMPANIONS = (
    r"(?:wife|husband|partner|friend|girlfriend|boyfriend|son|daughter|mom|mum|dad|mother|"
    r"father|brother|sister|colleague|boss|esposa|esposo|mujer|marido|pareja|novia|"
    r"novio|amigo|amiga|hijo|hija|madre|padre|hermano|hermana)"
)

# Children and infants, read before adults ("2 adults and a child"; "with my baby" is one
# infant, not a companion). Normalized text keeps "ñ" but drops accents: "bebé" is "bebe".
CHILD_NOUNS = r"(?:children|child|kids?|toddlers?|ni[nñ]os?|ni[nñ]as?|menores?)\b"
INFANT_NOUNS = r"(?:infants?|babies|baby|bebes?)\b"
CHILD_RULES: list[tuple[str, re.Pattern[str], Any]] = [
    ("infants", re.compile(r"\b" + NUM + r" (?:little |small |peque[nñ]os? )?" + INFANT_NOUNS), 1),
    (
        "infants",
        re.compile(
            r"\b(?:with|and|plus|con|y) (?:my|our|the|mi|nuestro|nuestra|el|la) " + INFANT_NOUNS
        ),
        None,
    ),
    ("children", re.compile(r"\b" + NUM + r" (?:little |small |peque[nñ]os? )?" + CHILD_NOUNS), 1),
    # "with my kid", "me and my child": one child, not a second adult (a companion).
    (
        "children",
        re.compile(
            r"\b(?:(?:with|and|con|y) )?(?:my|our|mi|nuestro|nuestra) (?:kid|child|toddler)\b"
        ),
        None,
    ),
]
# Children without a number ("with the kids", "con los niños"): some, how many asked.
SOME_CHILDREN = re.compile(
    r"\b(?:with|and|plus|con|y) (?:my |our |the |mis |nuestros |nuestras |los |las )?"
    r"(?:kids|children|little ones|toddlers|ni[nñ]os|ni[nñ]as|hijos|hijas|chicos|peques|crios)\b"
)

# Travellers named by their age: a family word and its age ("my son who is 4", "mi hija de 15",
# "mis hijos de 3 y 7 años"), or an age said as one ("a 3 year old", "my 6yo").
_KIN = (
    r"(?:son|daughter|kid|child|boy|girl|sons|daughters|kids|children|hijos?|hijas?|ni[nñ]os?|"
    r"ni[nñ]as?|nietos?|nietas?|sobrinos?|sobrinas?|grandson|granddaughter|nephew|niece)"
)
_AGES = r"(?P<ages>\d{1,2}(?:(?:,| and| y| e| &) \d{1,2}){0,4})"
_AGE_UNIT = r"(?:(?P<years>years?|yrs?|anos|años)|(?P<months>months?|meses))"
AGED = re.compile(
    r"\b(?:(?:with|and|plus|con|y) )?(?:(?:my|our|a|an|mi|mis|un|una|nuestro|nuestra|nuestros|"
    r"nuestras) )?(?:"
    + _KIN
    + r" (?:who is|who's|who are|aged?|ages|de|que tiene|que tienen|of) "
    + _AGES
    + r"(?: "
    + _AGE_UNIT
    + r"(?: old)?)?|"
    + _AGES.replace("?P<ages>", "?P<ages2>")
    + r"(?:[- ]"
    + _AGE_UNIT.replace("?P<years>", "?P<years2>").replace("?P<months>", "?P<months2>")
    + r"[- ]old| ?y/?o)\b)"
)

# Sons and daughters counted ("con mis 2 hijos", "with my two daughters"): maybe adults.
OFFSPRING = re.compile(
    r"\b(?:(?:with|and|plus|con|y) )?(?:(?:my|our|mis|nuestros|nuestras) )?"
    + NUM
    + r" (?:sons|daughters|hijos|hijas)\b"
)

# Counts of the whole party ("family of 4", "we are 4", "3 people"), children included.
WHOLE_PARTY: list[re.Pattern[str]] = [
    re.compile(r"\b" + NUM + r" (?:of us|de nosotros)\b"),
    re.compile(
        r"\b(?:for |para |somos |we are |we're )?"
        + NUM
        + r" (?!adults?\b|adultos?\b)"
        + TRAVELLER_NOUNS
    ),
    re.compile(r"\bfamily of " + NUM + r"\b"),
    re.compile(r"\b(?:somos|we are|we're|make it) (\d{1,2})\b"),
]
ALONE = re.compile(r"\b(?:just me|only me|alone|by myself|solo yo|yo solo)\b")
ADULT_RULES: list[tuple[re.Pattern[str], Any]] = [
    *((pattern, lambda m: number(m.group(1))) for pattern in WHOLE_PARTY[:3]),
    # "somos dos adultos", "we are 2 adults": the words before the count are no place.
    (
        re.compile(r"\b(?:(?:somos|we are|we're|for|para) )?" + NUM + r" (?:adults?|adultos?)\b"),
        lambda m: number(m.group(1)),
    ),
    (
        # "me and my wife", "me, my wife and …", "my wife and I", "mi mujer y yo" (the
        # companion before "and I").
        re.compile(
            r"\b(?:(?:me (?:and )?my|with my|(?:yo )?con mi) "
            + COMPANIONS
            + r"|(?:my|mi) "
            + COMPANIONS
            + r" (?:and|y) (?:i|me|yo))\b"
        ),
        lambda m: 2,
    ),
    (re.compile(r"\b(?:couple|a pair|pareja)\b"), lambda m: 2),
    (ALONE, lambda m: 1),
    (WHOLE_PARTY[3], lambda m: number(m.group(1))),
    (
        re.compile(
            r"\b(?:make it|for|para|somos|we are) (\d|two|three|four|five|six|seven|"
            r"eight|nine|ten|dos|tres|cuatro|cinco|seis|siete|ocho|nueve|diez)\b"
        ),
        lambda m: number(m.group(1)),
    ),
]
MAX_TRAVELLERS = 9  # seated travellers in one search (the search service's limit)
JOINING = re.compile(
    r"\b(?:(?:add|plus|añade|anade|agrega|suma) (?:a )?(?:(?:my|mi) " + COMPANIONS + r"|one|1|uno|"
    r"una persona|another (?:adult|person|passenger|traveller|traveler))|"
    r"(?:my|mi) " + COMPANIONS + r" (?:is |will be )?(?:coming|joining|comes|viene|se une)"
    r"(?: (?:too|also|as well|with me|tambien|conmigo))?|"
    r"viene (?:tambien )?mi " + COMPANIONS + r"(?: tambien)?|"
    r"one more (?:person|adult|passenger|traveller|traveler)|(?:una|uno) (?:persona )?mas)\b"
)
# Grown-ups counted beside the adults: friends, colleagues, teenagers (an adult's fare from 12),
# parents.
MORE_ADULTS: list[tuple[re.Pattern[str], Any]] = [
    (
        re.compile(
            r"\b(?:(?:with|and|plus|con|y) )?(?:(?:my|our|mis|nuestros|nuestras) )?"
            + NUM
            + r" (?:friends?|colleagues?|coworkers?|co-workers?|teens?|teenagers?|amigos?|amigas?|"
            r"companeros?|compañeros?|companeras?|compañeras?|colegas?|adolescentes?)\b"
        ),
        lambda m: number(m.group(1)),
    ),
    (
        re.compile(
            r"\b(?:with|and|plus|con|y) (?:my|our|mis|nuestros) (?:parents|padres|papas|"
            r"(?:mom|mum|mother) and (?:dad|father)|mama y papa|papa y mama)\b"
        ),
        lambda m: 2,
    ),
]
# The word that joins travellers to the rest ("we are 4 with 2 kids", "con 2 adultos", "and my 2
# kids"): no part of a place, before the travellers or after them ("with nyc" in "... with 2
# kids NYC to London", "my" in "to miami for me and my 2 kids").
_JOINED_BY = re.compile(
    r"\b(?:(?:(?:with|plus|including|and|con|incluyendo|y) )?(?:my|our|mis|nuestros|nuestras)|"
    r"with|plus|including|and|con|incluyendo|y) *$"
)


def _counted_out(
    pattern: re.Pattern[str], value: Callable[[re.Match[str]], int | None], work: str
) -> tuple[str, int]:
    """``work`` without each match of ``pattern`` (in one pass), and the sum of their values."""
    total = 0

    def drop(match: re.Match[str]) -> str:
        nonlocal total
        total += value(match) or 0
        return " "

    return pattern.sub(drop, work), total


def _without_travellers(work: str, match: re.Match[str]) -> str:
    """``work`` without the travellers ``match`` read, nor the word that joined them to it."""
    return _JOINED_BY.sub("", work[: match.start()]) + " " + work[match.end() :]


CABIN_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\bpremium(?: economy| turista| class)?\b"), "premium_economy"),
    (
        re.compile(
            r"\b(?:(?:in |fly |flying )?business(?! trip| meeting)(?: class)?|biz(?: class)?|"
            r"(?:clase )?ejecutiva|clase business)\b"
        ),
        "business",
    ),
    (
        re.compile(r"\b(?:(?:first|1st) class|in first|fly first|primera clase|en primera)\b"),
        "first",
    ),
    (
        re.compile(
            r"\b(?:economy(?: class)?|coach|(?:clase )?turista|economica|clase economica)\b"
        ),
        "economy",
    ),
]

NON_STOP = re.compile(
    r"\b(?:direct(?: flights?)?|non-stop|non stop|no stops|without stops|no layovers?|"
    r"no connections?|directos?|sin escalas)\b"
)
# Taking "direct" back: "with stops is fine", "any stops", "not direct", "con escalas".
ANY_STOPS = re.compile(
    r"\b(?:with (?:a |one |1 )?(?:stops?|connections?|layovers?)(?: (?:is|are) (?:fine|ok))?|"
    r"(?:any|some) (?:number of )?(?:stops|connections|layovers)|"
    r"(?:stops?|connections?|layovers?) (?:are |is )?(?:fine|ok|okay|allowed)|"
    r"(?:not|doesn't have to be|does not have to be|needn't be) (?:only )?(?:direct|non-stop)|"
    r"(?:con|con alguna) escalas?)\b"
)
ONE_WAY = re.compile(
    r"\b(?:(?:one|1)[- ]?way|single|no return|solo (?:de )?ida|(?:de )?ida solamente|"
    r"sin (?:vuelta|regreso))\b"
)
TRIP_KIND = re.compile(r"\b(?:business|work|family|school|company) (?:trip|travel|meeting)\b")
ROUND_TRIP = re.compile(
    r"\b(?:round[- ]?trip|(?:two|2)[- ]?way|return (?:ticket|trip)|ida y vuelta|return flights?)\b"
)

RETURN_MARK = (
    r"(?:and )?(?:back|return|returning|coming back|come back|go back|until|till|til|through|thru|"
    r"and back|coming home|come home|flying home|fly home|"
    r"regreso|regresando|regresar|regresamos|vuelta|volviendo|volver|volvemos|retorno|"
    r"hasta|y vuelta|y vuelvo|vuelvo)"
)
LENGTH = re.compile(
    r"\b(?:for|por|durante|stay|staying|stay for|staying for)? ?"
    r"(?P<n>" + NUM[1:-1] + r") (?P<u>nights?|days?|weeks?|noches?|dias?|semanas?)\b"
    r"(?: (?:trip|stay|long|de viaje))?"
)
LENGTH_A_WEEK = re.compile(r"\b(?:for|por|durante) (?:a|one|una) (week|semana)\b")
# "Friday for the weekend", "el viernes para el finde largo": a stay to the Sunday after the
# departure (the Monday for a long weekend); with no other day the weekend is the departure.
WEEKEND_STAY = re.compile(
    r"\b(?:for|por|durante|para) (?:the|a|this|el|un|este) (?P<long>long )?"
    r"(?:weekend|fin de semana)(?P<largo> largo)?\b"
)
# "A week from today", "3 days from now", "two weeks from Friday", "a week tomorrow": a
# departure counted from a day, not a stay ("for a week from Friday" is one, read by LENGTH).
COUNTED_FROM = re.compile(
    r"\b(?<!for )(?<!stay )(?<!staying )(?P<n>" + NUM[1:-1] + r") (?P<u>days?|weeks?|months?) "
    r"(?:from (?P<base>today|tonight|now|tomorrow|" + WEEKDAY[1:-1] + r")|"
    r"(?P<same>today|tomorrow))\b"
)


# A time of day ("at 9am", "around 10:30", "a las 18h"): not searched (a day's flights are
# shown), and never a place or a date ("10.30am" is not 10 October).
TIME_OF_DAY = re.compile(
    r"\b(?:(?:at|around|by|after|before|a las|sobre las|hacia las) )?"
    r"(?:\d{1,2}(?:[:.]\d{2})? ?(?:am|pm|a\.m\.?|p\.m\.?|h|hs|hrs)|\d{1,2}:\d{2})(?![\w:/])"
)
SHIFT = re.compile(
    r"\b(?:(?P<n>" + NUM[1:-1] + r") (?P<u>days?|weeks?|dias?|semanas?)|(?:the|el) (?:day|dia)) "
    r"(?P<dir>later|earlier|after|before|sooner|mas tarde|despues|antes)\b"
    r"(?! (?:tomorrow|yesterday|mañana|ayer|my|the|el|la|de|del|that|this|christmas|new year))"
)
# The words of a guess between a return word and its shift ("coming back like a week later",
# "volvemos como una semana después"), two at most.
_HEDGES = (
    r"(?: (?:like|maybe|about|around|roughly|approximately|probably|say|just|perhaps|como|"
    r"unos|unas|quizas|tipo|aproximadamente|mas o menos)){0,2}"
)
FORTNIGHT = re.compile(r"\b(?:a |one )?fortnight\b")
A_COUPLE_OF = re.compile(
    r"\b(?:a )?(?:couple of|un par de) (?=(?:days?|nights?|weeks?|months?|dias|noches|semanas|"
    r"meses)\b)"
)


# Where SHIFT was read, until the dates are: letters only, so a return word still reaches its
# date over it ("back the day after Sunday").
_SHIFTED = "shiftedbydays"


def _moved_dates(work: str, dates: list[_Found], result: Extraction) -> str:
    """A shift right before a date moves that date, not the trip's ("the day after
    Valentine's" is 15 February; "back 2 days after Jan 10" the 12th): ``work`` without the
    shift's place."""
    after = re.search(rf"\b{_SHIFTED} (?:(?:on|the|el) )?@d(\d+)\b", work)
    found = dates[int(after.group(1))] if after else None
    # Not a weekday's: which one it is depends on the departure, not read yet.
    if found is not None and isinstance(found.value, date) and not found.weekday:
        days = timedelta(days=result.shift_days or result.return_shift_days)
        dates[dates.index(found)] = _Found(found.value + days)
        result.shift_days = result.return_shift_days = 0
    return " ".join(re.sub(rf"\b{_SHIFTED}\b", " ", work).split())


def _counted_from(match: re.Match[str], ctx: DateContext) -> str:
    base = match["base"] or match["same"]
    if base in ("today", "tonight", "now"):
        start = ctx.today
    elif base == "tomorrow":
        start = ctx.today + timedelta(days=1)
    else:
        start = _next_weekday(ctx.today, WEEKDAYS[base])
    value = _in_units(match["n"], match["u"], start)
    # Written back as an ISO date, which the date rules read like any other.
    return f" {value.isoformat()} " if value else match.group(0)


def _length_nights(n: str, unit: str) -> int | None:
    count = number(n)
    if count is None:
        return None
    return count * 7 if unit.startswith(("week", "seman")) else count


# --- places ------------------------------------------------------------------------------

FROM_WORDS = r"(?:from|out of|leaving from|leaving|departing from|departing|de|desde|saliendo de)"
TO_WORDS_EN = r"(?:to|into|towards|for)"
TO_WORDS_ES = r"(?:a|hacia|hasta|para|al)"
BETWEEN = re.compile(r"\b(?:between|entre) (?P<a>.+?) (?:and|y) (?P<b>.+)$")


# A place slot named with its new value: "change the origin to Boston", "the destination is
# Rome", "cambia el destino a París": read as "from Boston", "to Rome" (the slot's name is no
# place, and "to" after "origin" does not make Boston the destination).
_SET_TO = r"(?: (?:city|airport))? (?:to|is|for|as|should be|a|es|por|sera|seria)\b"
NAMED_ORIGIN = re.compile(
    r"\b(?:(?:the|my|el|mi) )?(?:origin|departure (?:city|airport)|starting point|"
    r"origen|ciudad de (?:salida|origen)|aeropuerto de (?:salida|origen))" + _SET_TO
)
NAMED_DESTINATION = re.compile(
    r"\b(?:(?:the|my|el|mi) )?(?:destination|arrival (?:city|airport)|"
    r"destino|ciudad de (?:destino|llegada)|aeropuerto de (?:destino|llegada))" + _SET_TO
)
# Place names that contain a marker or date word ("de", "a", "domingo"), kept whole.
PROTECTED_NAMES = [
    "rio de janeiro",
    "santo domingo",
    "ciudad de mexico",
    "santiago de chile",
    "santiago de compostela",
    "santiago de los caballeros",
    "palma de mallorca",
    "las palmas de gran canaria",
    "fort de france",
    "mar del plata",
    "a coruña",
    "san sebastian",
    "sun valley",
    "saint denis",
]
# Words trimmed from the edges of place phrases (FILLER) that begin or end names in the airport
# data: "International Falls", "Kansas City", "Mountain Home", "In Salah", "The Valley", "Can
# Tho", "Hay River", "West Sale"; or that are a state's abbreviation after a name (STATE_EDGE_
# WORDS: "Portland ME", "Hilo HI"). Not "on" or "in" for Ontario and Indiana: "London on
# December 3rd" and "Columbus in March" are London and Columbus, Ohio.
STATE_EDGE_WORDS = frozenset(("me", "ok", "hi"))
NAME_EDGE_WORDS = STATE_EDGE_WORDS | frozenset(
    ("city", "international", "home", "the", "in", "show", "price", "can", "hay", "sale")
)
_PROTECT = re.compile(r"\b(" + "|".join(PROTECTED_NAMES) + r")\b")
# "la" next to a route word is "LA", Los Angeles ("NYC to LA", "LA to Chicago"), no cue.
SPANISH_CUES = re.compile(
    r"\b(?:de|desde|quiero|quisiera|vuelos?|hacia|para|mañana|billetes?|pasajes?|ida|vuelta|"
    r"el|(?<!\bto )(?<!\bfrom )la(?! to\b)|hoy|proximo|semana|busco|necesito|viernes|sabado|"
    r"domingo|lunes|martes|jueves)\b"
)


def _clean_place(phrase: str, spanish: bool = False) -> str:
    # "to New York no wait Boston", "a Roma, perdón, a Milán": the place after the correction.
    corrections = list(CORRECTED.finditer(phrase))
    if corrections and _clean_place(phrase[corrections[-1].end() :], spanish):
        phrase = phrase[corrections[-1].end() :]
    words = [w.replace("_", " ") for w in phrase.split() if not w.startswith("@d")]
    while words and words[0] in FILLER:
        words.pop(0)
    # Spanish articles never end a place name ("a Barcelona el viernes" → "barcelona el"), nor
    # does "y" ("a Roma el 3 y regresamos el 10" → "roma el y").
    trailing = {"el", "la", "los", "las", "del", "y"} if spanish else set()
    while words and (words[-1] in FILLER or words[-1] in trailing):
        words.pop()
    # What is left must contain letters and no leftover date/slot placeholder.
    cleaned = " ".join(words).strip(" -'")
    return cleaned if re.search(r"[a-zñ]", cleaned) else ""


def _edge_names(text: str, phrases: list[str]) -> tuple[tuple[str, str], ...]:
    """Each phrase with the name words (NAME_EDGE_WORDS) written next to it in ``text`` put
    back: the filler trim took "international" from "international falls"."""
    edge = "|".join(sorted(NAME_EDGE_WORDS))
    found: list[tuple[str, str]] = []
    for phrase in dict.fromkeys(phrases):
        pattern = rf"(?<![\w'])(?:(?:{edge}) )?{re.escape(phrase)}(?: (?:{edge}))?(?![\w'])"
        for match in re.finditer(pattern, text):
            if match.group(0) != phrase:
                found.append((phrase, match.group(0)))
                break
    return tuple(found)


@dataclass(frozen=True)
class WholeName:
    """The places read another way: "de" kept inside a name ("Santa Cruz de Tenerife",
    "Santiago de Cuba", "San Carlos de Bariloche") rather than read as "from". Only the place
    data can say which it is: the dialogue takes this reading when ``name`` resolves at
    least as well as ``part``, the place it extends (see BotEngine._apply)."""

    name: str  # "santa cruz de tenerife"
    part: str  # "santa cruz": the phrase read without it
    origin: str | None
    destination: str | None
    places: tuple[str, ...]


_INNER_DE = re.compile(r"(?<=[a-zñ]) de (?=[a-zñ])")


def _whole_names(
    text: str, read: tuple[str | None, str | None, list[str]]
) -> tuple[WholeName, ...]:
    """Each reading of ``text`` with one inner "de" kept inside a place name (at most 3)."""
    phrases = [p for p in (read[0], read[1], *read[2]) if p]
    found: list[WholeName] = []
    for match in list(_INNER_DE.finditer(text))[:3]:
        joined = text[: match.start()] + "_de_" + text[match.end() :]
        origin, destination, places = split_places(joined, True)
        pairs = [
            (name, part)
            for name in (origin, destination, *places)
            if name and name not in phrases
            for part in phrases
            if name.startswith(part + " de ")
        ]
        if len(pairs) == 1:
            name, part = pairs[0]
            found.append(WholeName(name, part, origin, destination, tuple(places)))
    return tuple(found)


def split_places(text: str, spanish: bool) -> tuple[str | None, str | None, list[str]]:
    """(origin, destination, unmarked places) from text with dates and counts removed."""
    between = BETWEEN.search(text)
    if between:
        first, second = _clean_place(between["a"], spanish), _clean_place(between["b"], spanish)
        return first or None, second or None, []
    to_words = TO_WORDS_EN + ("|" + TO_WORDS_ES if spanish else "")
    marker = re.compile(r"\b(?P<from>" + FROM_WORDS + r")\b|\b(?P<to>" + to_words + r")\b")
    segments: list[tuple[str | None, str]] = []
    position, kind = 0, None
    for match in marker.finditer(text):
        segments.append((kind, text[position : match.start()]))
        kind = "from" if match.group("from") else "to"
        position = match.end()
    segments.append((kind, text[position:]))

    # A place after "from" is the origin whatever else is around it.
    origin: str | None = next(
        (c for k, c in ((k, _clean_place(p, spanish)) for k, p in segments) if k == "from" and c),
        None,
    )
    destination: str | None = None
    unmarked: list[str] = []
    cleaned = [(kind, _clean_place(phrase, spanish)) for kind, phrase in segments]
    cleaned = [(kind, phrase) for kind, phrase in cleaned if phrase or kind is None]
    for index, (kind, phrase) in enumerate(cleaned):
        if not phrase:
            continue
        if kind == "from":
            continue
        elif kind == "to":
            destination = phrase  # the last "to" wins: "want to go to paris"
        else:
            following = cleaned[index + 1][0] if index + 1 < len(cleaned) else None
            if following == "to" and origin is None:
                origin = phrase  # "NYC to London"
            elif following == "from" and destination is None:
                destination = phrase  # "Rome from Paris"
            else:
                unmarked.append(phrase)
    return origin, destination, unmarked


# --- days of the month in words --------------------------------------------------------


_UNITS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TEENS = (
    *("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen"),
    *("eighteen", "nineteen"),
)
_NTHS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth")
_TEEN_NTHS = (*(f"{word}th" for word in _TEENS[3:]), "tenth", "eleventh", "twelfth")
_SPANISH_DAYS = """uno dos tres cuatro cinco seis siete ocho nueve diez once doce trece catorce
quince dieciseis diecisiete dieciocho diecinueve veinte veintiuno veintidos veintitres
veinticuatro veinticinco veintiseis veintisiete veintiocho veintinueve treinta"""


def _day_numbers() -> tuple[dict[str, int], dict[str, int]]:
    """Days of the month in words: (ordinals, cardinals). "twenty-fifth", "twenty fifth",
    "veinticinco", "treinta y uno"."""
    ordinals = dict(zip(_NTHS, range(1, 10), strict=True))
    ordinals |= dict(zip(_TEEN_NTHS, (13, 14, 15, 16, 17, 18, 19, 10, 11, 12), strict=True))
    cardinals = dict(zip(_UNITS + _TEENS, range(1, 20), strict=True))
    cardinals |= dict(zip(_SPANISH_DAYS.split(), range(1, 31), strict=True))
    cardinals |= {"treinta y uno": 31}
    for tens, base in (("twenty", 20), ("thirty", 30)):
        ordinals[tens[:-1] + "ieth"], cardinals[tens] = base, base
        for n in range(1, 10 if base == 20 else 2):
            for joint in (" ", "-"):
                ordinals[f"{tens}{joint}{_NTHS[n - 1]}"] = base + n
                cardinals[f"{tens}{joint}{_UNITS[n - 1]}"] = base + n
    return ordinals, cardinals


DAY_ORDINALS, DAY_CARDINALS = _day_numbers()
_DAY_ORDINAL = _alternation(DAY_ORDINALS)
_DAY_WORD = _alternation(DAY_ORDINALS | DAY_CARDINALS)
_DAY_CARDINAL = _alternation(DAY_CARDINALS)
# A day of the month in words, where a date is written: next to a month ("december third",
# "the first of december", "el tres de diciembre", "March twenty-fifth") or as "on the
# twenty-fifth". Not "the first one" (an offer), "first class", nor a count ("for two,
# december 3", "december, two adults").
DAY_IN_WORDS = re.compile(
    r"\b(?:(?P<a>" + _DAY_ORDINAL[1:-1] + r")(?= (?:of |de |del )?" + MONTH + r"\b)"
    r"|(?P<a2>" + _DAY_CARDINAL[1:-1] + r")(?= (?:of|de|del) " + MONTH + r"\b)"
    r"|(?P<month>" + MONTH[1:-1] + r") (?P<the>the )?(?P<b>" + _DAY_WORD[1:-1] + r")\b"
    r"(?! (?:of us|de nosotros|" + "|".join((TRAVELLER_NOUNS, CHILD_NOUNS, INFANT_NOUNS)) + "))"
    r"|(?P<on>on|until|till|by) the (?P<c>" + _DAY_ORDINAL[1:-1] + r"))\b"
)


def _day_in_digits(match: re.Match[str]) -> str:
    word = match["a"] or match["a2"] or match["b"] or match["c"]
    day = f"{DAY_ORDINALS.get(word) or DAY_CARDINALS[word]}{'th' if word in DAY_ORDINALS else ''}"
    if match["month"]:
        return f"{match['month']} {match['the'] or ''}{day}"
    return f"{match['on']} the {day}" if match["on"] else day


# "friday. actually no, saturday", "on friday sorry I mean saturday", "el viernes, perdón, el
# sábado": the second date corrects the first, which the message takes back.
CORRECTED = re.compile(
    r"\b(?:actually|sorry|i mean|i meant|no|wait|rather|make (?:it|that)|"
    r"perdon|digo|quiero decir|mejor|espera)\b"
)


NEGATED = re.compile(r"\b(?:not|no)(?: on| el)? $")


def _taken_back(work: str) -> set[int]:
    """The dates (indices of their "@dN") corrected by the next one in the message."""
    marks = list(re.finditer(r"@d(\d+)", work))
    return {
        int(first.group(1))
        for first, second in itertools.pairwise(marks)
        if (
            CORRECTED.search(work[first.end() : second.start()])
            # "not Friday, Thursday", "no el viernes, el jueves": the first is taken back.
            or NEGATED.search(work, max(0, first.start() - 8), first.start())
        )
        and not re.search(r"\b" + RETURN_MARK + r"\b", work[first.end() : second.start()])
    }


# From a return word to its date, over a few words that are no place ("come back after new
# years like the 2nd", "back home by the 5th"), never over a "to" or "from".
_TO_ITS_DATE = r" (?:(?!(?:to|from|a|de|desde|and|y)\b)[a-zñ']+ ){0,4}?(?:on |el |the )?"


# A count or a time after the second day is no day: "Dec 5 or 6 adults", "Dec 5 or 6pm".
_NOT_A_DAY = (
    r"(?! ?(?:am|pm|h|hrs?|adults?|people|persons?|pax|passengers?|tickets?|seats?|of us|kids?|"
    r"children|adultos?|personas?|pasajeros?|billetes?|ni[nñ]os?|[/:.]\d)\b)"
)
EITHER_SHORT = [
    (
        re.compile(
            r"\b(tomorrow|mañana) (or|o) (?:the day after|pasado)\b(?! (?:tomorrow|mañana))"
        ),
        r"\1 \2 pasado mañana",
    ),
    (
        re.compile(
            r"\b(this|este) (weekend|fin de semana) (or|o) (?:the )?next\b"
            r"(?! (?:week|weekend|month|year|semana|mes)\b)"
        ),
        r"\1 \2 \3 next weekend",
    ),
    (
        re.compile(
            r"\b"
            + MONTH
            + r" (\d{1,2})(?:st|nd|rd|th)? (or|o) (\d{1,2})(?:st|nd|rd|th)?\b"
            + _NOT_A_DAY
        ),
        r"\1 \2 \3 \1 \4",
    ),
    (
        re.compile(
            r"\b(?:el |the )?(\d{1,2})(?:st|nd|rd|th)? (or|o) (?:el |the )?(\d{1,2})"
            r"(?:st|nd|rd|th)? (?:de |of )?" + MONTH + r"\b"
        ),
        r"\1 \4 \2 \3 \4",
    ),
]
# Two dates joined by "or" ("Friday or Saturday", "el viernes o el sábado"): a choice.
_EITHER = re.compile(
    r"@d(?P<a>\d+) (?:or|o|u)(?: (?:maybe|perhaps|possibly|quizas|quiza|tal vez))? @d(?P<b>\d+)"
)
_EITHER_WINDOW = 60  # characters before the choice that may hold its return word
_RETURN_BEFORE = r"\b" + RETURN_MARK + _TO_ITS_DATE + r"$"


def _return_to_origin(work: str, spanish: bool) -> str:
    """ "NYC to London Friday and return to NYC Sunday": the place after a return word is where
    the trip began, not a new destination (which made the route New York to New York); only
    after a whole route ("fly back to London on Friday from NYC" is a trip to London)."""
    to = r"(?:to|a|al|hasta)" if spanish else "to"
    mark = re.compile(
        r"\b(?P<mark>"
        + RETURN_MARK
        + r") "
        + to
        + r" (?:[a-zñ'_-]+ ){1,4}?(?=(?:on |el |the )?@d\d)"
    )
    match = mark.search(work)
    if match is None or not re.search(r"\S \b" + to + r"\b \S", work[: match.start()]):
        return work
    return work[: match.start()] + match["mark"] + " " + work[match.end() :]


# "... then London to Paris", "... and also Paris to Rome", "... y de Roma a París": another
# trip after a whole route. "and" (or "y") joins one only when a route follows it, and never a
# return ("and back Sunday", "y vuelvo el domingo").
_NEXT_TRIP = re.compile(
    r"\b(?:(?P<then>(?:and )?then|after that|(?:y )?luego|y despues)|"
    r"(?:and )?also|and|(?:y )?tambien|y)\b "
)


# A return word a word or two into what follows an "and": "and back Sunday", "then fly back to
# NYC Sunday".
_RETURN_AHEAD = re.compile(r"(?:(?!(?:to|from|a|de)\b)[a-z']+ ){0,2}?" + RETURN_MARK + r"\b")
_PLACE_WINDOW = 200  # characters either side of a route's "to" that hold its places' words


def _route_back(work: str, there: re.Match[str], end: int, at: int, to: str) -> int | None:
    """Where the route that begins at ``at`` ends, if it flies back the first route (``there``,
    ending before ``end``): "London to NYC" after "NYC to London" (each place as written, in up
    to three words)."""
    # A bounded window of words either side of the first route's "to": read again for every
    # "and", the whole text would make a message of "and and and …" quadratic.
    before = work[max(0, there.start() - _PLACE_WINDOW) : there.start() + 1].split()
    after = work[there.end() - 1 : min(end, there.end() + _PLACE_WINDOW)].split()
    for o, d in itertools.product(range(1, 4), range(1, 4)):
        origin, destination = " ".join(before[-o:]), " ".join(after[:d])
        way = rf"{re.escape(destination)} {to} {re.escape(origin)}\b"
        found = re.compile(r"(?:(?:fly|flying|from|desde|de) )?" + way).match(work, at)
        if found:
            return found.end()
    return None


def _first_trip(work: str, spanish: bool) -> tuple[str, bool]:
    """``work`` up to where a second trip begins, and whether one does. The way back is no
    second trip but the return: "... then London to NYC Sunday" is read as "... and back
    Sunday"."""
    to = r"(?:to|a|hacia)" if spanish else "to"
    whole = re.compile(r"\S \b" + to + r"\b \S")
    route = re.compile(whole.pattern + r"|\b(?:from|desde)\b \S")
    # Each "and" is judged by what is known of the whole text, found once (the first whole
    # route, the last route, the last letter) and by patterns matched in place: searched again
    # before and after each "and", a message of "y y y …" took quadratic time (0.14 s of the
    # worker's event loop for 4,000 characters after "NYC a Londres").
    first_whole = whole.search(work)
    if first_whole is None:
        return work, False  # no whole route yet ("2 adults and 1 child to London")
    starts = [0]
    while (found := route.search(work, starts[-1])) is not None:
        starts.append(found.start() + 1)
    last_route = starts[-1] - 1  # -1: none
    last_letter = max(work.rfind(letter) for letter in "abcdefghijklmnopqrstuvwxyzñ")
    kept: list[str] = []  # the text before ``copied``, a way back read as "and back"
    copied = 0
    for match in _NEXT_TRIP.finditer(work):
        if first_whole.end() > match.start() or match.start() < copied:
            continue  # no whole route before it yet, or inside a way back already read
        if _RETURN_AHEAD.match(work, match.end()):
            continue
        back = _route_back(work, first_whole, match.start(), match.end(), to)
        if back is not None:
            back_word = "y vuelta" if spanish else "and back"
            kept += [work[copied : match.start()], f" {back_word} "]
            copied = back
            continue
        if last_route >= match.end() or (match["then"] and last_letter >= match.end()):
            return "".join(kept) + work[copied : match.start()], True
    return "".join(kept) + work[copied:], False


# --- airport codes that are also short weekdays ------------------------------------------

# San Antonio (SAT), Sun Valley (SUN) and Mount Cook (MON) have the codes of short English
# weekdays ("tue" and "wed" are no airport's; THU and FRI are military fields). Which one the
# user means is read from how it is written: a weekday next to a route word is a place when
# the other side of that word is no date ("from sat to jfk", "SUN to LAX", "NYC to SAT"),
# and a weekday on both sides is a range ("from sat to mon", "fri to sun").
CODE_WEEKDAYS = frozenset(("sat", "sun", "mon"))
_ROUTE_FROM = frozenset(("from", "de", "desde"))
_ROUTE_TO = frozenset(("to", "a", "hacia"))
_RANGE_WORDS = _ROUTE_TO | {"until", "till", "through", "thru", "hasta", "al"}
# The words after which "to <weekday>" moves a date ("change it to sat", "push the date to
# sun"), not the destination.
_DATE_TARGETS = frozenset(
    ("it", "date", "dates", "day", "departure", "return", "that", "this", "back", "moved")
)
_UPPER_CODE = re.compile(r"\b(SAT|SUN|MON)\b")


def _dateish(word: str) -> bool:
    return (
        word in WEEKDAYS
        or word in MONTHS
        or word[:1].isdigit()
        or word in ("the", "next", "this", "el", "tomorrow", "mañana", "today", "hoy")
    )


def _los_angeles(work: str, text: str) -> str:
    """``work`` with "la" marked as a place ("la_") where it is Los Angeles: after the English
    "to" or "from" or before "to" ("NYC to LA", "LA to Chicago", "fly from la"), or written LA
    next to any route word ("de Madrid a LA"), not the Spanish article ("a la Habana", "para
    la tarde")."""
    words = work.split(" ")
    if "la" not in words:
        return work
    upper = bool(re.search(r"\bLA\b", text)) and any(ch.islower() for ch in text)
    for i, word in enumerate(words):
        if word != "la":
            continue
        before = words[i - 1] if i else ""
        after = words[i + 1] if i + 1 < len(words) else ""
        if (
            before in ("to", "from")
            or after == "to"
            or (upper and (before in _ROUTE_FROM | _ROUTE_TO or after in _ROUTE_TO))
        ):
            words[i] = "la_"
    return " ".join(words)


def _weekday_codes(work: str, text: str) -> str:
    """``work`` with each short weekday that names an airport marked as a place ("sat_", which
    no date rule reads and the place splitter reads as "sat"). Written in capitals in a
    message that is not all capitals (SAT, SUN), a route word before or after it is enough;
    in lower case only the whole route is ("from sat to jfk": "NYC to London from sat" may
    mean "from Saturday")."""
    words = work.split(" ")
    if not CODE_WEEKDAYS.intersection(words):
        return work
    upper = set()
    if any(ch.islower() for ch in text):
        upper = {code.lower() for code in _UPPER_CODE.findall(text)}
    for i, word in enumerate(words):
        if word not in CODE_WEEKDAYS:
            continue
        before = words[i - 1] if i else ""
        before2 = words[i - 2] if i > 1 else ""
        after = words[i + 1] if i + 1 < len(words) else ""
        after2 = words[i + 2] if i + 2 < len(words) else ""
        ranged = after in _RANGE_WORDS and _dateish(after2)  # "from sat to mon"
        if before in _ROUTE_FROM:
            place = not ranged and (word in upper or (after in _ROUTE_TO and after2 != ""))
        elif before in _ROUTE_TO:
            place = word in upper and not _dateish(before2) and before2 not in _DATE_TARGETS
        elif after in _ROUTE_TO:
            place = word in upper and after2 != "" and not ranged
        else:
            place = False
        if place:
            words[i] = word + "_"
    return " ".join(words)


# --- the whole message -------------------------------------------------------------------


def _read_travellers(work: str, result: Extraction) -> str:
    """The travellers ``work`` names, set on ``result``; ``work`` without them."""
    # Travellers, once dates are out of the way ("the 5th" is not 5 people): children and
    # infants first, then adults (a whole party's count less its children and infants).
    for slot, pattern, group in CHILD_RULES:
        match = pattern.search(work)
        if match:
            count = number(match[group]) if group else 1
            setattr(result, slot, (getattr(result, slot) or 0) + (count or 0))
            work = _without_travellers(work, match)
    # Travellers named by their age ("with my 5 year old", "con mi hijo de 5 años", "mis hijos
    # de 3 y 7 años"): under 2 an infant, under 12 a child, else a grown-up; not counted again
    # when a count of children came first ("2 kids, 5 and 8 years old").
    already = result.children is not None or result.infants is not None
    grown = 0
    for match in AGED.finditer(work):
        if not already:
            months = bool(match["months"] or match["months2"])
            for age in map(int, re.findall(r"\d+", match["ages"] or match["ages2"])):
                if months or age < 2:
                    result.infants = (result.infants or 0) + 1
                elif age < 12:
                    result.children = (result.children or 0) + 1
                else:
                    grown += 1
    work = AGED.sub(" ", work)
    offspring = OFFSPRING.search(work)
    if offspring:
        count = number(offspring.group(1))
        if count and 1 <= count <= MAX_TRAVELLERS:
            result.offspring = count
            work = _without_travellers(work, offspring)
    some = SOME_CHILDREN.search(work)
    if some and result.children is None:
        result.some_children = True
        work = _without_travellers(work, some)
    young = (result.children or 0) + (result.infants or 0)
    # Grown-ups counted beside the adults ("with 3 friends", "2 adults 2 teens", "me and my
    # parents"): added to them (or to the user), each read once.
    more = grown
    for pattern, value in MORE_ADULTS:
        work, counted = _counted_out(pattern, value, work)
        more += counted
    # After those, one more than before ("add my wife", "my wife is coming too", "plus one",
    # "viene mi mujer también"): added to the trip's travellers by the dialogue.
    joining = JOINING.search(work)
    if joining:
        result.add_adults = 1
        work = work[: joining.start()] + " " + work[joining.end() :]
    for pattern, value in ADULT_RULES:
        match = pattern.search(work)
        if match:
            count = value(match)
            if count and pattern in WHOLE_PARTY and count > young:
                count -= young  # "family of 4 with 2 kids": 2 adults
            if not count:
                continue
            count += more
            if 1 <= count <= MAX_TRAVELLERS:
                result.adults = count
                if pattern is ALONE and not young:
                    result.children = result.infants = 0  # "just me": nobody else comes
            else:
                result.too_many = count  # "12 adults": not searched as 1, nor read as a place
            work = _without_travellers(work, match)
            break
    else:
        if more and 1 + more <= MAX_TRAVELLERS:
            result.adults = 1 + more  # the user and them
        elif more:
            result.too_many = 1 + more
    return work


def extract(text: str, today: date, locale: str = "en") -> Extraction:
    """Everything ``text`` says about a trip, relative to ``today`` (the business's date)."""
    ctx = DateContext(today=today, day_first=locale.lower() not in {"en", "en-us"})
    result = Extraction()
    # "@dN" marks a date read (see find_dates): the same written by the user ("back @d3") named
    # a date that was never read, and the message failed on every retry.
    work = _without_pictographs(normalize(text)).replace("@", " ")
    work = SHORT_WEEKDAY.sub(lambda m: SHORT_WEEKDAYS[m.group(1) or m.group(2)], work)
    spanish = locale.lower().startswith("es") or bool(SPANISH_CUES.search(work))
    work = _PROTECT.sub(lambda m: m.group(1).replace(" ", "_"), work)
    work = _weekday_codes(work, text)
    work = _los_angeles(work, text)
    work, result.more_trips = _first_trip(work, spanish)

    work = NAMED_ORIGIN.sub(" from ", work)  # "change the origin to Boston": from Boston
    work = NAMED_DESTINATION.sub(" to ", work)
    work = TRIP_KIND.sub(" ", work)  # "business trip" is not business class
    if ONE_WAY.search(work):
        result.one_way = True
        work = ONE_WAY.sub(" ", work)
    if ROUND_TRIP.search(work):
        result.one_way = False
        work = ROUND_TRIP.sub(" ", work)
    if ANY_STOPS.search(work):
        result.non_stop = False
        work = ANY_STOPS.sub(" ", work)
    if NON_STOP.search(work):
        result.non_stop = True
        work = NON_STOP.sub(" ", work)
    for pattern, cabin in CABIN_RULES:
        if pattern.search(work):
            result.cabin = result.cabin or cabin
            work = pattern.sub(" ", work)

    # The second of two days said short ("tomorrow or the day after", "Dec 5 or 6", "el 5 o el
    # 6 de enero"), written out so that both are read as dates and the user asked which.
    for pattern, whole in EITHER_SHORT:
        work = pattern.sub(whole, work)
    # "in a couple of weeks", "for a couple of nights", "en un par de semanas": two (not two
    # travellers, which "a couple" alone is).
    work = A_COUPLE_OF.sub("2 ", work)
    work = FORTNIGHT.sub("2 weeks", work)
    work = COUNTED_FROM.sub(lambda match: _counted_from(match, ctx), work)
    # "a day later", "two days earlier": the departure moved, not a stay of a day (LENGTH).
    # After a return word ("come back a day later") it is the return that moves; a message may
    # move both ("leave a day later and come back a day later").
    while (shift := SHIFT.search(work)) is not None:
        days = _length_nights(shift["n"] or "1", shift["u"] or "day") or 0
        if shift["dir"] in ("earlier", "before", "sooner", "antes"):
            days = -days
        if re.search(r"\b" + RETURN_MARK + _HEDGES + r"\s?$", work[: shift.start()]):
            result.return_shift_days = days
        else:
            result.shift_days = days
        # A word in its place: with a date right after it ("the day after Valentine's"), it
        # moves that date instead (see _moved_dates).
        work = work[: shift.start()] + f" {_SHIFTED} " + work[shift.end() :]
    # Length of stay before dates and travellers: "for 3 nights" is neither.
    length = LENGTH.search(work)
    if length and not re.search(r"\b(?:in|en|de)\s?$", work[: length.start()]):
        result.nights = _length_nights(length["n"], length["u"])
        work = work[: length.start()] + " " + work[length.end() :]
    elif LENGTH_A_WEEK.search(work):
        result.nights = 7
        work = LENGTH_A_WEEK.sub(" ", work)

    weekend_stay = WEEKEND_STAY.search(work)
    if weekend_stay and not result.nights:
        # Read once the dates are: a stay after a departure, else the departure (see below).
        work = work[: weekend_stay.start()] + " " + work[weekend_stay.end() :]
    else:
        weekend_stay = None
    work = TIME_OF_DAY.sub(" ", work)  # "at 9am", "10:30": no date, no place
    work, result.period = find_period(work, ctx.today)
    work = DAY_IN_WORDS.sub(_day_in_digits, work)
    work, dates = find_dates(work, _numeric_order(work, ctx))
    work = _moved_dates(work, dates, result)

    work = _read_travellers(work, result)

    work = _return_to_origin(work, spanish)
    # Which date is which: ranges, "back <date>", then the first remaining is the departure.
    # A date taken back in the same message ("friday, actually saturday") is no date.
    used: set[int] = _taken_back(work)
    for index, item in enumerate(dates):
        if isinstance(item.value, tuple) and index not in used:
            result.depart, result.return_date = item.value
            used.add(index)
            break
    either = _EITHER.search(work)  # the first only: each would search the text before it
    either_weekdays = (False, False)
    if either is not None:
        one, other = dates[int(either["a"])], dates[int(either["b"])]
        indices = {int(either["a"]), int(either["b"])}
        if (
            isinstance(one.value, date)
            and isinstance(other.value, date)
            and one.value != other.value
            and not indices & used
        ):
            result.either = (one.value, other.value)
            either_weekdays = (one.weekday, other.weekday)
            before = work[max(0, either.start() - _EITHER_WINDOW) : either.start()]
            result.either_return = bool(re.search(_RETURN_BEFORE, before))
            used.update(indices)
            # Neither is left for a place ("or nyc"): both marks stay, side by side.
            work = f"{work[: either.start()]}@d{either['a']} @d{either['b']}{work[either.end() :]}"
    for match in re.finditer(r"\b" + RETURN_MARK + _TO_ITS_DATE + r"@d(\d+)\b", work):
        index = int(match.group(1))
        value = dates[index].value
        if index not in used and isinstance(value, date):
            result.return_date = value
            result.return_weekday = dates[index].weekday
            result.return_day_only = dates[index].day_only
            used.add(index)
        elif index not in used and isinstance(value, NoSuchDate):
            result.no_such_date, result.no_such_return = value, True
            used.add(index)
    work = re.sub(r"\b" + RETURN_MARK + _TO_ITS_DATE + r"(?=@d)", " ", work)

    def date_range(match: re.Match[str]) -> str:
        first, second = dates[int(match.group(1))].value, dates[int(match.group(2))].value
        if not (isinstance(first, date) and isinstance(second, date)):
            return match.group(0)
        if dates[int(match.group(2))].weekday:
            second = weekday_after(second, first)  # "Friday to Sunday" on a Saturday
        # Backwards ("10 Dec to 5 Dec") is kept as written: the engine asks about it.
        result.depart, result.return_date = first, second
        result.return_day_only = dates[int(match.group(2))].day_only
        used.update({int(match.group(1)), int(match.group(2))})
        # Its words too: the "from" and "to" of "from Friday to Sunday NYC to London" would
        # leave an empty origin before "NYC", which was lost.
        return " "

    work = re.sub(
        r"(?:\b(?:from|desde|del) )?@d(\d+) (?:to|-|until|till|al|a|hasta) @d(\d+)",
        date_range,
        work,
    )
    for index, item in enumerate(dates):
        if index in used:
            continue
        if isinstance(item.value, date) and result.depart is None:
            result.depart = item.value
            result.depart_weekday = item.weekday
            result.depart_day_only = item.day_only
        elif isinstance(item.value, NoSuchDate) and result.depart is None:
            result.no_such_date = result.no_such_date or item.value
        elif item.value is None:
            result.unreadable_date = True

    if result.either and result.either_return and result.depart:
        # "Friday back Sunday or Monday": each the first one after the departure.
        result.either = (
            weekday_after(result.either[0], result.depart)
            if either_weekdays[0]
            else result.either[0],
            weekday_after(result.either[1], result.depart)
            if either_weekdays[1]
            else result.either[1],
        )
    if weekend_stay and result.depart and not (result.return_date or result.either):
        # "Friday for the weekend": back the Sunday after it (a long weekend's Monday).
        last = 0 if weekend_stay["long"] or weekend_stay["largo"] else 6
        result.return_date = result.depart + timedelta(
            days=(last - result.depart.weekday()) % 7 or 7
        )
    elif weekend_stay and not (result.depart or result.either or result.period):
        result.depart = _weekend(ctx.today, 0)  # "for the weekend": this weekend's Saturday
    # "Friday back Sunday": a weekday return is the first one after the departure.
    if result.depart and result.return_date and result.return_weekday:
        result.return_date = weekday_after(result.return_date, result.depart)
    elif result.depart and result.return_date and result.return_day_only:
        result.return_date = day_after(result.return_date, result.depart)  # "28th back the 4th"

    # Dates joined by a range word should not leave "to" behind for the place splitter.
    work = re.sub(r"@d\d+", " ", work)
    work = re.sub(r"\s+", " ", work).strip()
    origin, destination, unmarked = split_places(work, spanish)
    result.origin, result.destination, result.places = origin, destination, unmarked
    if spanish:
        result.whole_names = _whole_names(work, (origin, destination, unmarked))
    result.edge_names = _edge_names(work, [p for p in (origin, destination, *unmarked) if p])

    if result.depart is None and not dates and not result.places:
        pass
    elif result.depart is None and result.places and not (origin or destination):
        # A lone phrase may still be a date dateparser reads ("next month").
        guess = _parse_with_dateparser(" ".join(result.places), ctx)
        if guess is not None:
            result.depart, result.places = guess, []
    return result
