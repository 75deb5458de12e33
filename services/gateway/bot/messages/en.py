"""English replies. Every locale module defines the same keys (a test checks it)."""

from __future__ import annotations

MESSAGES: dict[str, str] = {
    # dates and small words used inside other messages
    "weekdays": "Mon Tue Wed Thu Fri Sat Sun",
    "months": "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec",
    "month_names": (
        "January February March April May June July August September October November December"
    ),
    "date": "{weekday} {day} {month}",
    "adults_one": "1 adult",
    "adults_many": "{n} adults",
    "children_one": "1 child",
    "children_many": "{n} children",
    "infants_one": "1 infant",
    "infants_many": "{n} infants",
    "cabin_economy": "economy",
    "cabin_premium_economy": "premium economy",
    "cabin_business": "business",
    "cabin_first": "first",
    "non_stop_only": "non-stop only",
    "from_place": "from {place}",
    "to_place": "to {place}",
    "one_way": "one way",
    "return_on": "back {date}",
    "stops_0": "non-stop",
    "stops_1": "1 stop",
    "stops_many": "{n} stops",
    "next_day": " ({n:+d})",  # (+1), or (-1) landing the calendar day before
    "duration": "{h}h {m:02d}m",
    # conversation
    "greeting": (
        "Hi{name}! ✈️ I find flights. Tell me your trip in one message, for example "
        "*NYC to London next Friday*."
    ),
    "greeting_again": "Hi{name}!",
    "greeting_step": "Hi{name}! ✈️ I find flights. Where are you flying from?",
    "help": (
        "I search flights. Write your trip the way you'd say it:\n"
        "• *NYC to London next Friday*\n"
        "• *2 tickets Paris -> Tokyo 3 March back 10 March business class*\n"
        "• *direct flights from Tel Aviv to Berlin on the 5th*\n"
        "You can correct anything (*actually Sunday*, *make it 2 adults*, *from Newark "
        "instead*), share your location to fly from the nearest airport, or write *new* to "
        "start over."
    ),
    "rate_notice": "You are sending messages faster than we can answer. Please wait a minute.",
    "thanks": "You're welcome! ✈️ Write *new* whenever you want another search.",
    "bye": "Goodbye! ✈️ Write whenever you want another search.",
    "new": "OK, starting over. Where would you like to fly?",
    "new_step": "OK, starting over. Where are you flying from?",
    "cancel": "Cancelled; I've forgotten this trip. Say hi whenever you want to search again.",
    "not_understood": (
        "Sorry, I didn't get that. Tell me where and when, e.g. *NYC to London next Friday*, "
        "or write *help*."
    ),
    "ask_origin": "Where are you flying from?",
    "ask_destination": "Where do you want to go?",
    "ask_date": "When do you want to leave? (e.g. *next Friday* or *3 March*)",
    "number_for_place": (
        "That's a number; I need a city or an airport code (e.g. *London* or *JFK*). {question}"
    ),
    "ask_either_date": (
        "I search one day at a time. Which day do you want to leave, {first} or {second}?"
    ),
    "ask_either_return": (
        "I search one day at a time. Which day do you come back, {first} or {second}?"
    ),
    "either_first": "I'll search {first} first; for {second}, write *{typed}*.",
    "have_so_far": "Got it: {summary}.",
    "place_not_found": (
        "I couldn't find an airport for “{text}”. Try a city name or an airport code like *JFK*."
    ),
    "list_outdated": "That list was for an earlier question.",
    "choose_place": "Which “{text}” do you mean? Reply with a number.",
    "choose_place_unsure": (
        "I'm not sure where “{text}” is. Is it one of these? Reply with a number, or write "
        "the city or an airport code."
    ),
    "choose_button": "Choose",
    "all_airports": "{city} (all airports)",
    "date_not_understood": "I couldn't read that date. Try *next Friday*, *3 March* or *12/24*.",
    "date_in_past": "{date} has already passed. When do you want to leave?",
    "ask_day_in_period": "Which day {period}?",
    "period_month": "in {month}",
    "period_early": "in early {month}",
    "period_mid": "in mid-{month}",
    "period_end": "at the end of {month}",
    "period_week": "in the {nth} week of {month}",
    "period_last_week": "in the last week of {month}",
    "period_christmas": "around Christmas",
    "period_new_year": "around New Year",
    "week_ordinals": "first second third fourth",
    "ask_return_in_period": "Which day {period} do you come back?",
    "period_holidays": "between Christmas and New Year",
    "period_easter": "around Easter",
    "period_thanksgiving": "around Thanksgiving",
    "period_half": "in the {nth} half of {month}",
    "period_spring": "in spring {years}",
    "period_summer": "in summer {years}",
    "period_autumn": "in autumn {years}",
    "period_winter": "in winter {years}",
    "period_example": "(e.g. *{day} {month}*)",
    "period_reyes": "around Three Kings' Day",
    "period_puente": "around the {month} holiday weekend",
    "no_such_date": "There's no {day} {month} in {year}.",
    "too_many_travellers": (
        "I can search for up to {limit} travellers at a time, so not {n} (airlines book larger "
        "groups through their group desks)."
    ),
    "ask_travellers": "How many travellers should I search for? (1\u2013{limit})",
    "infants_need_laps": (
        "Each infant travels on an adult's lap, so {n} infants need at least {n} adults."
    ),
    "ask_adults": "How many adults are travelling?",
    "ask_offspring": "How many of your {n} children are under 12? (*0* if none)",
    "ask_children": "How many children are travelling?",
    "one_trip_at_a_time": (
        "I search one trip at a time, so this is the first. Send me the next one when you're ready."
    ),
    "ask_return": "When do you come back?",
    "date_too_far": "I can only search up to a year ahead. Please pick an earlier date.",
    "return_before_departure": (
        "The return ({return_date}) is before the departure ({date}). When do you come back?"
    ),
    "return_too_far": (
        "I can only search up to a year ahead, so not a return on {return_date}. "
        "When do you come back? (or *one way*)"
    ),
    "same_place": "The origin and destination are both {place}. Where do you want to go?",
    "location_set": "Flying from {place}, the nearest airport to you.",
    "location_none": "I couldn't find an airport near that location. Where are you flying from?",
    "non_text": (
        "I can only read text messages. Tell me your trip, e.g. *NYC to London next Friday*, "
        "or share your location to fly from the nearest airport."
    ),
    # searching and results
    "searching": "Searching flights {route} for {date} …",
    "results_header": "✈️ *{route}* · {date}{return_part} · {travellers}{extras}",
    "offer_line": "*{n}.* *{price}* · {carrier}\n   {depart} → {arrive} · {duration} · {stops}",
    "offer_return_line": "   ↩ {depart} → {arrive} · {duration} · {stops}",
    "results_footer": "Reply *1*\u2013*{last}* for details, *more* for more, *new* to start over.",
    "results_footer_one": "Reply *1* for details, *more* for more, *new* to start over.",
    "demo_label": "_Demo fares: generated sample data, not bookable._",
    "stale_label": "⚠️ _Live search is unavailable; these prices are from {age} ago._",
    "age_minutes": "{n} min",
    "age_hours": "{n} h",
    "no_results": "No flights found for {route} on {date}. Try another date or *new*.",
    "cheaper": (
        "Offer *1* at {price} is the cheapest I found: offers are sorted cheapest first. For "
        "less, try {hints}."
    ),
    "cheaper_hint_day": "another day (e.g. *{day} {month} instead*)",
    "cheaper_hint_stops": "flights with stops (*with stops is fine*)",
    "cheaper_hint_cabin": "economy (*economy*)",
    "or": "or",
    "no_more": "That's all the offers I have. Reply with a number for details, or *new*.",
    "pick_offer": "Reply with a number from 1 to {last} for details.",
    "details_header": "*Offer {n}* · *{price}* for {travellers}",
    "details_direction_out": "*Outbound* · {duration} · {stops}",
    "details_direction_back": "*Return* · {duration} · {stops}",
    "details_segment": "{carrier}{number} {dep_airport} {dep_time} → {arr_airport} {arr_time}",
    "details_seats_one": "1 seat left at this price.",
    "details_seats": "{n} seats left at this price.",
    "details_footer": "Reply another number, *more* for more, or *new* to start over.",
    "search_unavailable": (
        "Sorry, flight search isn't available right now. I've kept your trip ({summary}); "
        "reply *retry* to try again."
    ),
    "search_invalid": "I couldn't search that: {reason}",
    "nothing_to_retry": "There's no search to retry yet. Where would you like to fly?",
}
