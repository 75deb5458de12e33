"""Flight offers: a compact JSON form kept in the conversation state (so "2" or "more" works in a
later message without searching again), and their WhatsApp rendering."""

from __future__ import annotations

import functools
import re
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.numbers import format_currency

from parley.search.v1 import search_pb2
from services.gateway.bot.messages import Texts

PAGE = 3
KEPT = 9  # offers kept in the state: three pages

SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "ILS": "₪", "JPY": "¥", "INR": "₹"}


def compact(offer: search_pb2.FlightOffer) -> dict[str, Any]:
    return {
        "id": offer.id,
        "price": offer.total_price.amount,
        "currency": offer.total_price.currency_code,
        "carrier": offer.validating_carrier,
        "seats": offer.seats_left if offer.HasField("seats_left") else None,
        "demo": offer.demo_data,
        "legs": [
            {
                "stops": itinerary.stops,
                "minutes": itinerary.duration.seconds // 60,
                "segments": [
                    {
                        "carrier": s.carrier_code,
                        "number": s.flight_number,
                        "from": s.departure_airport,
                        "dep": s.departure_time,
                        "to": s.arrival_airport,
                        "arr": s.arrival_time,
                    }
                    for s in itinerary.segments
                ],
            }
            for itinerary in offer.itineraries
        ],
    }


def price(t: Texts, offer: dict[str, Any]) -> str:
    """The total as the user's locale writes it: "$944.19" in English (as it always was),
    "944,19 US$" in Spain, "USD 944.19" in Mexico (where "$" is a peso), by CLDR's rules."""
    symbol = SYMBOLS.get(offer["currency"])
    try:
        value = Decimal(str(offer["price"]))
    except InvalidOperation:
        return f"{symbol}{offer['price']}" if symbol else f"{offer['price']} {offer['currency']}"
    if t.language != "en" and value.is_finite():
        written = format_currency(value, offer["currency"], locale=_cldr_locale(t.locale))
        # CLDR's currency spacing, which babel leaves out: a code or a symbol ending in a
        # letter is kept apart from the digits ("USD944.19" → "USD 944.19").
        return re.sub(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])", "\u00a0", written).strip()
    amount = f"{value:,}"  # exact, with thousands separators
    return f"{symbol}{amount}" if symbol else f"{amount} {offer['currency']}"


@functools.cache
def _cldr_locale(tag: str) -> Locale:
    """The business's locale for babel: "es-MX" as given; a region babel does not know is
    read as the language alone ("es")."""
    try:
        return Locale.parse(tag.replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        return Locale.parse(tag.replace("-", "_").split("_")[0])


def _time(value: str) -> str:
    try:
        return datetime.fromisoformat(value).strftime("%H:%M")
    except ValueError:
        return value


def _days_later(first: str, last: str) -> int:
    try:
        return (datetime.fromisoformat(last).date() - datetime.fromisoformat(first).date()).days
    except ValueError:
        return 0


# State comes back from the session service as JSON, where numbers may have become floats:
# every number read from a stored offer goes through int().


def duration(t: Texts, minutes: float) -> str:
    total = int(minutes)
    return t("duration", h=total // 60, m=total % 60)


def stops(t: Texts, stops_: float) -> str:
    count = int(stops_)
    if count == 0:
        return t("stops_0")
    return t("stops_1") if count == 1 else t("stops_many", n=count)


def _leg_times(t: Texts, leg: dict[str, Any]) -> tuple[str, str]:
    segments = leg["segments"]
    if not segments:
        return "", ""
    first, last = segments[0], segments[-1]
    later = _days_later(first["dep"], last["arr"])
    depart = f"{_time(first['dep'])} {first['from']}"
    arrive = f"{_time(last['arr'])} {last['to']}" + (t("next_day", n=later) if later else "")
    return depart, arrive


def offer_lines(t: Texts, n: int, offer: dict[str, Any]) -> str:
    legs = offer["legs"]
    if not legs:
        return f"*{n}.* *{price(t, offer)}*"
    depart, arrive = _leg_times(t, legs[0])
    lines = [
        t(
            "offer_line",
            n=n,
            price=price(t, offer),
            carrier=offer["carrier"] or legs[0]["segments"][0]["carrier"],
            depart=depart,
            arrive=arrive,
            duration=duration(t, legs[0]["minutes"]),
            stops=stops(t, legs[0]["stops"]),
        )
    ]
    for leg in legs[1:]:
        back_depart, back_arrive = _leg_times(t, leg)
        lines.append(
            t(
                "offer_return_line",
                depart=back_depart,
                arrive=back_arrive,
                duration=duration(t, leg["minutes"]),
                stops=stops(t, leg["stops"]),
            )
        )
    return "\n".join(lines)


def day(t: Texts, value: date) -> str:
    return t(
        "date",
        weekday=t.words("weekdays")[value.weekday()],
        day=value.day,
        month=t.words("months")[value.month - 1],
    )


def details(t: Texts, n: int, offer: dict[str, Any], travellers: str) -> str:
    lines = [t("details_header", n=n, price=price(t, offer), travellers=travellers)]
    for index, leg in enumerate(offer["legs"]):
        key = "details_direction_out" if index == 0 else "details_direction_back"
        lines.append("")
        lines.append(t(key, duration=duration(t, leg["minutes"]), stops=stops(t, leg["stops"])))
        for segment in leg["segments"]:
            lines.append(
                t(
                    "details_segment",
                    carrier=segment["carrier"],
                    number=segment["number"],
                    dep_airport=segment["from"],
                    dep_time=_when(t, segment["dep"]),
                    arr_airport=segment["to"],
                    arr_time=_when(t, segment["arr"]),
                )
            )
    if offer.get("seats"):
        lines.append("")
        seats = int(offer["seats"])
        lines.append(t("details_seats_one") if seats == 1 else t("details_seats", n=seats))
    if offer.get("demo"):
        lines.append(t("demo_label"))
    lines.append("")
    lines.append(t("details_footer"))
    return "\n".join(lines)


def _when(t: Texts, value: str) -> str:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    return f"{day(t, moment.date())} {moment.strftime('%H:%M')}"
