"""Respuestas en español. Mismas claves que ``en.py`` (una prueba lo comprueba)."""

from __future__ import annotations

MESSAGES: dict[str, str] = {
    "weekdays": "lun mar mié jue vie sáb dom",
    "months": "ene feb mar abr may jun jul ago sep oct nov dic",
    "month_names": (
        "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre"
    ),
    "date": "{weekday} {day} {month}",
    "adults_one": "1 adulto",
    "adults_many": "{n} adultos",
    "children_one": "1 niño",
    "children_many": "{n} niños",
    "infants_one": "1 bebé",
    "infants_many": "{n} bebés",
    "cabin_economy": "turista",
    "cabin_premium_economy": "turista superior",
    "cabin_business": "business",
    "cabin_first": "primera",
    "non_stop_only": "solo directos",
    "from_place": "desde {place}",
    "to_place": "a {place}",
    "one_way": "solo ida",
    "return_on": "vuelta {date}",
    "stops_0": "directo",
    "stops_1": "1 escala",
    "stops_many": "{n} escalas",
    "next_day": " ({n:+d})",
    "duration": "{h} h {m:02d} min",
    "greeting": (
        "¡Hola{name}! ✈️ Busco vuelos. Cuéntame tu viaje en un mensaje, por ejemplo "
        "*de Madrid a Londres el viernes*."
    ),
    "greeting_again": "¡Hola{name}!",
    "greeting_step": "¡Hola{name}! ✈️ Busco vuelos. ¿Desde dónde sales?",
    "help": (
        "Busco vuelos. Escribe tu viaje como lo dirías:\n"
        "• *de Madrid a Londres el próximo viernes*\n"
        "• *2 billetes Barcelona -> Roma 3 de marzo vuelta 10 de marzo*\n"
        "• *vuelos directos a Berlín el día 5*\n"
        "Puedes corregir cualquier cosa (*mejor el domingo*, *somos 2 adultos*, *desde "
        "Valencia*), compartir tu ubicación para salir del aeropuerto más cercano, o escribir "
        "*nuevo* para empezar de cero."
    ),
    "rate_notice": (
        "Estás enviando mensajes más rápido de lo que podemos responder. Espera un minuto, por "
        "favor."
    ),
    "thanks": "¡De nada! ✈️ Escribe *nuevo* cuando quieras otra búsqueda.",
    "bye": "¡Hasta pronto! ✈️ Escríbeme cuando quieras otra búsqueda.",
    "new": "Vale, empezamos de nuevo. ¿Adónde quieres volar?",
    "new_step": "Vale, empezamos de nuevo. ¿Desde dónde sales?",
    "cancel": "Cancelado; he olvidado este viaje. Escríbeme cuando quieras buscar otra vez.",
    "not_understood": (
        "Perdona, no lo he entendido. Dime de dónde, adónde y cuándo, p. ej. *de Madrid a "
        "Londres el viernes*, o escribe *ayuda*."
    ),
    "ask_origin": "¿Desde dónde sales?",
    "ask_destination": "¿Adónde quieres ir?",
    "ask_date": "¿Qué día quieres salir? (p. ej. *el viernes* o *3 de marzo*)",
    "number_for_place": (
        "Eso es un número; necesito una ciudad o un código de aeropuerto (p. ej. *Londres* o "
        "*MAD*). {question}"
    ),
    "ask_either_date": ("Busco un día cada vez. ¿Qué día quieres salir, el {first} o el {second}?"),
    "ask_either_return": ("Busco un día cada vez. ¿Qué día vuelves, el {first} o el {second}?"),
    "either_first": "Busco primero el {first}; para el {second}, escribe *{typed}*.",
    "have_so_far": "Entendido: {summary}.",
    "place_not_found": (
        "No encuentro ningún aeropuerto para «{text}». Prueba con el nombre de la ciudad o un "
        "código como *MAD*."
    ),
    "list_outdated": "Esa lista era de una pregunta anterior.",
    "choose_place": "¿A qué «{text}» te refieres? Responde con un número.",
    "choose_place_unsure": (
        "No sé bien qué lugar es «{text}». ¿Es alguno de estos? Responde con un número, o "
        "escribe la ciudad o el código del aeropuerto."
    ),
    "choose_button": "Elegir",
    "all_airports": "{city} (todos los aeropuertos)",
    "date_not_understood": "No entiendo esa fecha. Prueba *el viernes*, *3 de marzo* o *24/12*.",
    "date_in_past": "El {date} ya ha pasado. ¿Qué día quieres salir?",
    "ask_day_in_period": "¿Qué día {period}?",
    "period_month": "de {month}",
    "period_early": "a principios de {month}",
    "period_mid": "a mediados de {month}",
    "period_end": "a finales de {month}",
    "period_week": "de la {nth} semana de {month}",
    "period_last_week": "de la última semana de {month}",
    "period_christmas": "en Navidades",
    "period_new_year": "en Año Nuevo",
    "week_ordinals": "primera segunda tercera cuarta",
    "ask_return_in_period": "¿Qué día {period} vuelves?",
    "period_holidays": "entre Navidad y Año Nuevo",
    "period_easter": "en Semana Santa",
    "period_thanksgiving": "en Acción de Gracias",
    "period_half": "de la {nth} quincena de {month}",
    "period_spring": "en la primavera de {years}",
    "period_summer": "en el verano de {years}",
    "period_autumn": "en el otoño de {years}",
    "period_winter": "en el invierno de {years}",
    "period_example": "(p. ej. *{day} de {month}*)",
    "period_reyes": "en Reyes",
    "period_puente": "en el puente de {month}",
    "no_such_date": "El {day} de {month} de {year} no existe.",
    "too_many_travellers": (
        "Puedo buscar para {limit} viajeros como máximo, así que no para {n} (las aerolíneas "
        "reservan los grupos más grandes aparte)."
    ),
    "ask_travellers": "¿Para cuántos viajeros busco? (de 1 a {limit})",
    "infants_need_laps": (
        "Cada bebé viaja en brazos de un adulto, así que {n} bebés necesitan al menos {n} adultos."
    ),
    "ask_adults": "¿Cuántos adultos viajan?",
    "ask_offspring": "¿Cuántos de tus {n} hijos tienen menos de 12 años? (*0* si ninguno)",
    "ask_children": "¿Cuántos niños viajan?",
    "one_trip_at_a_time": (
        "Busco un viaje cada vez, así que este es el primero. Envíame el siguiente cuando quieras."
    ),
    "ask_return": "¿Qué día vuelves?",
    "date_too_far": "Solo puedo buscar hasta un año vista. Elige una fecha más cercana.",
    "return_before_departure": (
        "La vuelta ({return_date}) es antes de la ida ({date}). ¿Qué día vuelves?"
    ),
    "return_too_far": (
        "Solo puedo buscar hasta un año vista, así que no una vuelta el {return_date}. "
        "¿Qué día vuelves? (o *solo ida*)"
    ),
    "same_place": "El origen y el destino son {place}. ¿Adónde quieres ir?",
    "location_set": "Sales de {place}, el aeropuerto más cercano a ti.",
    "location_none": "No encuentro aeropuertos cerca de esa ubicación. ¿Desde dónde sales?",
    "non_text": (
        "Solo puedo leer mensajes de texto. Cuéntame tu viaje, p. ej. *de Madrid a Londres el "
        "viernes*, o comparte tu ubicación para salir del aeropuerto más cercano."
    ),
    "searching": "Buscando vuelos {route} para el {date} …",
    "results_header": "✈️ *{route}* · {date}{return_part} · {travellers}{extras}",
    "offer_line": "*{n}.* *{price}* · {carrier}\n   {depart} → {arrive} · {duration} · {stops}",
    "offer_return_line": "   ↩ {depart} → {arrive} · {duration} · {stops}",
    "results_footer": (
        "Responde *1*\u2013*{last}* para ver detalles, *más* para ver más, *nuevo* para empezar de "
        "cero."
    ),
    "results_footer_one": (
        "Responde *1* para ver detalles, *más* para ver más, *nuevo* para empezar de cero."
    ),
    "demo_label": "_Tarifas de demostración: datos de ejemplo, no reservables._",
    "stale_label": ("⚠️ _La búsqueda en vivo no está disponible; estos precios son de hace {age}._"),
    "age_minutes": "{n} min",
    "age_hours": "{n} h",
    "no_results": "No hay vuelos {route} el {date}. Prueba otra fecha o escribe *nuevo*.",
    "cheaper": (
        "La oferta *1*, a {price}, es la más barata que he encontrado: las ofertas van de la "
        "más barata a la más cara. Para pagar menos, prueba {hints}."
    ),
    "cheaper_hint_day": "otro día (p. ej. *mejor el {day} de {month}*)",
    "cheaper_hint_stops": "vuelos con escalas (*con escalas*)",
    "cheaper_hint_cabin": "turista (*en turista*)",
    "or": "o",
    "no_more": "No tengo más ofertas. Responde con un número para ver detalles, o *nuevo*.",
    "pick_offer": "Responde con un número del 1 al {last} para ver detalles.",
    "details_header": "*Oferta {n}* · *{price}* para {travellers}",
    "details_direction_out": "*Ida* · {duration} · {stops}",
    "details_direction_back": "*Vuelta* · {duration} · {stops}",
    "details_segment": "{carrier}{number} {dep_airport} {dep_time} → {arr_airport} {arr_time}",
    "details_seats_one": "Queda 1 plaza a este precio.",
    "details_seats": "Quedan {n} plazas a este precio.",
    "details_footer": "Responde otro número, *más* para ver más, o *nuevo* para empezar de cero.",
    "search_unavailable": (
        "Lo siento, la búsqueda de vuelos no está disponible ahora mismo. He guardado tu viaje "
        "({summary}); responde *reintentar* para probar de nuevo."
    ),
    "search_invalid": "No he podido buscar eso: {reason}",
    "nothing_to_retry": "Aún no hay ninguna búsqueda que repetir. ¿Adónde quieres volar?",
}

# Places by the name and country the search service gives them (its ``city_name``: the airport
# data's, or its KNOWN_AS / city-code name) → the name Spanish speakers write: the exonyms, and
# the accents the data drops. By country, since an exonym is one place's: London, Ontario
# stays London. Only what differs; every other name is shown as it comes. Each
# name, written back, finds the same place (a test checks it against the search service's
# index), so a user can answer with what the bot showed.
PLACES: dict[tuple[str, str], str] = {
    # city codes (all airports)
    ("New York", "US"): "Nueva York",
    ("London", "GB"): "Londres",
    ("Paris", "FR"): "París",
    ("Tokyo", "JP"): "Tokio",
    ("Milan", "IT"): "Milán",
    ("Rome", "IT"): "Roma",
    ("Stockholm", "SE"): "Estocolmo",
    ("Sao Paulo", "BR"): "São Paulo",
    ("Seoul", "KR"): "Seúl",
    ("Beijing", "CN"): "Pekín",
    ("Moscow", "RU"): "Moscú",
    ("Rio de Janeiro", "BR"): "Río de Janeiro",
    ("Rio De Janeiro", "BR"): "Río de Janeiro",
    ("Jakarta", "ID"): "Yakarta",
    ("Reykjavik", "IS"): "Reikiavik",
    ("Bucharest", "RO"): "Bucarest",
    # Europe, Africa, Asia
    ("Munich", "DE"): "Múnich",
    ("Cologne", "DE"): "Colonia",
    ("Lisbon", "PT"): "Lisboa",
    ("Prague", "CZ"): "Praga",
    ("Vienna", "AT"): "Viena",
    ("Firenze", "IT"): "Florencia",
    ("Venezia", "IT"): "Venecia",
    ("Napoli", "IT"): "Nápoles",
    ("Torino", "IT"): "Turín",
    ("Genova", "IT"): "Génova",
    ("Athens", "GR"): "Atenas",
    ("Istanbul", "TR"): "Estambul",
    ("Frankfurt am Main", "DE"): "Fráncfort",
    ("Geneva", "CH"): "Ginebra",
    ("Brussels", "BE"): "Bruselas",
    ("Warsaw", "PL"): "Varsovia",
    ("Kraków", "PL"): "Cracovia",
    ("Copenhagen", "DK"): "Copenhague",
    ("Edinburgh", "GB"): "Edimburgo",
    ("Zurich", "CH"): "Zúrich",
    ("Basel/Mulhouse", "FR"): "Basilea/Mulhouse",
    ("Bordeaux", "FR"): "Burdeos",
    ("Nice", "FR"): "Niza",
    ("Marseille", "FR"): "Marsella",
    ("Amsterdam", "NL"): "Ámsterdam",
    ("Berlin", "DE"): "Berlín",
    ("Hamburg", "DE"): "Hamburgo",
    ("Dublin", "IE"): "Dublín",
    ("Dusseldorf", "DE"): "Düsseldorf",
    ("Sofia", "BG"): "Sofía",
    ("Belgrade", "RS"): "Belgrado",
    ("St. Petersburg", "RU"): "San Petersburgo",
    ("Kyiv", "UA"): "Kiev",
    ("Cairo", "EG"): "El Cairo",
    ("Tunis", "TN"): "Túnez",
    ("Algiers", "DZ"): "Argel",
    ("Cape Town", "ZA"): "Ciudad del Cabo",
    ("Johannesburg", "ZA"): "Johannesburgo",
    ("Jeddah", "SA"): "Yeda",
    ("New Delhi", "IN"): "Nueva Delhi",
    ("Singapore", "SG"): "Singapur",
    ("Dubai", "AE"): "Dubái",
    ("Sydney", "AU"): "Sídney",
    # the Americas
    ("Philadelphia", "US"): "Filadelfia",
    ("New Orleans", "US"): "Nueva Orleans",
    ("Havana", "CU"): "La Habana",
    ("Mexico City", "MX"): "Ciudad de México",
    ("Guatemala City", "GT"): "Ciudad de Guatemala",
    ("Panama", "PA"): "Panamá",
    ("Bogota", "CO"): "Bogotá",
    ("Medellin", "CO"): "Medellín",
    ("Cancun", "MX"): "Cancún",
    ("Asuncion", "PY"): "Asunción",
    ("San Jose", "CR"): "San José",
    ("San Jose", "US"): "San José",
    ("Mazatlan", "MX"): "Mazatlán",
    ("Merida", "MX"): "Mérida",
    ("Merida", "VE"): "Mérida",
    ("Queretaro", "MX"): "Querétaro",
    ("Culiacan", "MX"): "Culiacán",
    ("Cucuta", "CO"): "Cúcuta",
    # Spain
    ("Malaga", "ES"): "Málaga",
    ("Almeria", "ES"): "Almería",
    ("Cordoba", "AR"): "Córdoba",
    ("Cordoba", "ES"): "Córdoba",
    ("Leon", "ES"): "León",
    ("A Coruna", "ES"): "A Coruña",
    ("San Sebastian", "ES"): "San Sebastián",
    ("Palma De Mallorca", "ES"): "Palma de Mallorca",
    ("Tenerife North", "ES"): "Tenerife Norte",
    ("Tenerife South", "ES"): "Tenerife Sur",
}
