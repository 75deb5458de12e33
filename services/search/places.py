"""Airports and city codes: validation, free-text resolution and nearest airports.

Built once at start-up from the ``airportsdata`` package (IATA-coded entries only, about 8,000)
plus a small table of metropolitan city codes (NYC, LON, PAR, ...). ``airportsdata`` has no size
or traffic field, so importance comes from what we know: city-code members and a curated set of
major hubs rank first, then airports named "International", then the rest; heliports, seaplane
bases, military fields (except joint civil-military airports) and rail or bus stations are
valid codes but never suggested.
"""

from __future__ import annotations

import bisect
import functools
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import airportsdata
from babel import Locale
from rapidfuzz import fuzz, process

from parley.search.v1 import search_pb2

# Metropolitan (multi-airport) city codes: code → (name, members, primary first).
CITY_CODES: dict[str, tuple[str, tuple[str, ...]]] = {
    "NYC": ("New York", ("JFK", "EWR", "LGA")),
    "LON": ("London", ("LHR", "LGW", "STN", "LTN", "LCY", "SEN")),
    "PAR": ("Paris", ("CDG", "ORY", "BVA")),
    "TYO": ("Tokyo", ("HND", "NRT")),
    "CHI": ("Chicago", ("ORD", "MDW")),
    "WAS": ("Washington", ("IAD", "DCA", "BWI")),
    "MIL": ("Milan", ("MXP", "LIN", "BGY")),
    "ROM": ("Rome", ("FCO", "CIA")),
    "STO": ("Stockholm", ("ARN", "BMA", "NYO", "VST")),
    "BUE": ("Buenos Aires", ("EZE", "AEP")),
    "SAO": ("Sao Paulo", ("GRU", "CGH", "VCP")),
    "OSA": ("Osaka", ("KIX", "ITM", "UKB")),
    "SEL": ("Seoul", ("ICN", "GMP")),
    "BJS": ("Beijing", ("PEK", "PKX")),
    "MOW": ("Moscow", ("SVO", "DME", "VKO")),
    "RIO": ("Rio de Janeiro", ("GIG", "SDU")),
    "YTO": ("Toronto", ("YYZ", "YTZ")),
    "YMQ": ("Montreal", ("YUL",)),
    "JKT": ("Jakarta", ("CGK", "HLP")),
    "DTT": ("Detroit", ("DTW",)),
    "YEA": ("Edmonton", ("YEG",)),
    "REK": ("Reykjavik", ("KEF", "RKV")),
    "BUH": ("Bucharest", ("OTP", "BBU")),
    "SPK": ("Sapporo", ("CTS", "OKD")),
}

# Other names people use: alias → code (exonyms, old names, nicknames).
ALIASES: dict[str, str] = {
    "new york city": "NYC",
    "ny": "NYC",  # two letters: only the whole query ("NY"), never a word of a longer one
    "ldn": "LON",  # also Lamidanda's code (Nepal): the alias ranks first (see _resolve)
    "manhattan": "NYC",
    "big apple": "NYC",
    "la": "LAX",
    "sf": "SFO",
    "san fran": "SFO",
    "vegas": "LAS",
    "dc": "WAS",
    "washington dc": "WAS",
    "bombay": "BOM",
    "mumbai": "BOM",
    "peking": "BJS",
    "saigon": "SGN",
    "ho chi minh city": "SGN",
    "calcutta": "CCU",
    "kolkata": "CCU",
    "madras": "MAA",
    "chennai": "MAA",
    "bangalore": "BLR",
    "bengaluru": "BLR",
    "roma": "ROM",
    "milano": "MIL",
    "munchen": "MUC",
    "muenchen": "MUC",
    "munich": "MUC",
    "koln": "CGN",
    "cologne": "CGN",
    "moskva": "MOW",
    "lisboa": "LIS",
    "lisbon": "LIS",
    "praha": "PRG",
    "prague": "PRG",
    "wien": "VIE",
    "vienna": "VIE",
    "firenze": "FLR",
    "florence": "FLR",
    "venezia": "VCE",
    "venice": "VCE",
    "napoli": "NAP",
    "turin": "TRN",  # Torino in the data: "Turin" alone found Maturin (MUN)
    "naples": "NAP",
    "sevilla": "SVQ",
    "seville": "SVQ",
    "tokio": "TYO",
    "londres": "LON",
    "tel aviv yafo": "TLV",
    "tel aviv jaffa": "TLV",
    "athens": "ATH",
    "athina": "ATH",
    "istanbul": "IST",
    "hawaii": "HNL",
    "frankfurt": "FRA",
    "nueva york": "NYC",
    "nova iorque": "NYC",
    "nueva delhi": "DEL",
    "geneva": "GVA",
    "ginebra": "GVA",
    "genf": "GVA",
    "bruselas": "BRU",
    "bruxelles": "BRU",
    "brussel": "BRU",
    "brussels": "BRU",
    "atenas": "ATH",
    "moscu": "MOW",
    "pekin": "BJS",
    "estambul": "IST",
    "varsovia": "WAW",
    "warszawa": "WAW",
    "mailand": "MIL",
    "venedig": "VCE",
    "florenz": "FLR",
    "neapel": "NAP",
    "prag": "PRG",
    "kopenhagen": "CPH",
    "copenhague": "CPH",
    "estocolmo": "STO",
    "munique": "MUC",
    "zurique": "ZRH",
    "edimburgo": "EDI",
    "nueva orleans": "MSY",
    "filadelfia": "PHL",
    "le caire": "CAI",
    "el cairo": "CAI",
    "maui": "OGG",
    "bali": "DPS",
    "jerusalem": "TLV",
    "new delhi": "DEL",
    "delhi": "DEL",
    "st petersburg": "LED",
    "saint petersburg": "LED",
    "kyiv": "KBP",
    "kiev": "KBP",
    "geneve": "GVA",
    "zurich": "ZRH",
    "copenhagen": "CPH",
    "kobenhavn": "CPH",
    "dubai": "DXB",
    "hong kong": "HKG",
    "singapore": "SIN",
    "bangkok": "BKK",
    "shanghai": "PVG",
    "mexico city": "MEX",
    "ciudad de mexico": "MEX",
    "la habana": "HAV",
    "habana": "HAV",
    # Spanish names that otherwise resolve to a lookalike elsewhere (Tunez → Cartagena, Niza →
    # Giza, Francfort → Frankfort KY, Las Palmas → Palmas BR, Tenerife Sur → Sur OM).
    "tunez": "TUN",
    "niza": "NCE",
    "cracovia": "KRK",
    "francfort": "FRA",
    "basilea": "BSL",
    "florencia": "FLR",
    "gerona": "GRO",
    "las palmas": "LPA",
    "las palmas de gran canaria": "LPA",
    "tenerife sur": "TFS",
    "tenerife norte": "TFN",
    "panama": "PTY",
    "ciudad de panama": "PTY",
    "ciudad del cabo": "CPT",
    "burdeos": "BOD",
    "sidney": "SYD",
    "argel": "ALG",
    "yeda": "JED",
    "ciudad de guatemala": "GUA",
    "cdmx": "MEX",
    # Cities whose main airport airportsdata files under a neighbouring town (Medellin's is in
    # Rionegro): the city's name otherwise finds only a small airport (Olaya Herrera, EOH,
    # domestic), or nothing (Oviedo: Asturias airport, in Ranon). KNOWN_AS makes them names too.
    # Spanish names with "de" whose airport the data files under a shorter or misspelt name
    # (Santiago, Jerez de la Forntera, Sta Cruz de la Palma; "Santa Cruz" alone is Bolivia's).
    # Santa Cruz de Tenerife is the city, Tenerife North (TFN) its airport.
    "santa cruz de tenerife": "TFN",
    "santa cruz de la palma": "SPC",
    "santa cruz de la sierra": "VVI",
    "santiago de cuba": "SCU",
    "jerez de la frontera": "XRY",
    "san jose de costa rica": "SJO",
    "san juan de puerto rico": "SJU",
    "santiago de los caballeros": "STI",
    "mahon": "MAH",
    "la coruna": "LCG",
    "coruna": "LCG",
    "vitoria gasteiz": "VIT",
    "cartagena de indias": "CTG",
    "felipe angeles": "NLU",
    # Names of an airport or resort that are neither its city nor its airport's name: Sun Valley's
    # airport is Friedman Memorial, in Hailey ("sun valley" otherwise found Harlingen's "Valley
    # International"); O'Hare written without its apostrophe found Havre.
    "sun valley": "SUN",
    "ohare": "ORD",
    "haneda": "HND",  # "Tokyo International": "haneda" found Handan
    "philly": "PHL",
    # A big city's English or local name that is also a small town's exact name (Frankfort,
    # Kentucky and Lyons, Kansas, neither with airline service) or only a weak lookalike. A
    # real town's own name is left to win over a hub it resembles (Asheville, Mangalore).
    "frankfort": "FRA",
    "lyons": "LYS",
    "genoa": "GOA",
    "goteborg": "GOT",
    "cracow": "KRK",
    "nurnberg": "NUE",
    "nuernberg": "NUE",
    "nola": "MSY",  # was Ndola
    # Spanish and Portuguese names found only as lookalikes (Marshall, Sequim, Xiangxi) or
    # below the bot's confirmation score.
    "marsella": "MRS",
    "marselha": "MRS",
    "pequim": "BJS",
    "xangai": "PVG",
    "toquio": "TYO",
    "aifa": "NLU",
}

# The city people know an airport by, where airportsdata names the town it stands in
# (Rionegro for Medellin's, Ranon for Oviedo's), an island with "Island", or a spelling of
# its own (Belgrad, Sta Cruz): shown to users ("Medellin (MDE)", not "Rionegro (MDE)") and
# found by that name. A city code's airport is named after it by rule instead (see
# _known_city): Pearson (Mississauga) is Toronto, Trudeau (Dorval) Montreal.
KNOWN_AS: dict[str, str] = {
    "MDE": "Medellin",
    "OVD": "Oviedo",
    "GRK": "Killeen",
    "NLU": "Mexico City",
    "YVR": "Vancouver",
    "PTY": "Panama",
    "CVG": "Cincinnati",
    "DSS": "Dakar",
    "TFU": "Chengdu",
    "IST": "Istanbul",
    "BOD": "Bordeaux",
    "BSL": "Basel/Mulhouse",
    "BEG": "Belgrade",
    "DPS": "Bali",
    "TFN": "Tenerife North",
    "TFS": "Tenerife South",
    "LPA": "Gran Canaria",
    "ACE": "Lanzarote",
    "FUE": "Fuerteventura",
    "VDE": "El Hierro",
    "XRY": "Jerez de la Frontera",
    "SPC": "Santa Cruz de la Palma",
    "SCU": "Santiago de Cuba",
    "EAS": "San Sebastian",  # Hondarribia
    "GMZ": "La Gomera",  # Alajero
    "LCG": "A Coruna",  # Culleredo
    "MAH": "Menorca",  # "Menorca Island"
    "MLN": "Melilla",  # "Melilla Island"
    "RMU": "Murcia",  # Corvera
    "VIT": "Vitoria",  # Alava
    "TER": "Terceira",  # Lajes
    "TAR": "Taranto",  # Grottaglie
    "EBA": "Elba",  # "Marina  Di Campo"
    "MLA": "Malta",  # Luqa: "Malta" found Malta, Montana
}


def _known_city(code: str, name: str, city: str, metro: str | None) -> str:
    """The city to show for an airport: KNOWN_AS, else a city code's name when the airport's
    own name says it and not the data's town (YYZ "Toronto Pearson", city Mississauga), else
    the data's city (EWR "Newark Liberty" stays Newark, BWI Baltimore)."""
    if code in KNOWN_AS:
        return KNOWN_AS[code]
    if metro is not None:
        named, town = normalize(name), normalize(city)
        if normalize(metro) in named and (not town or town not in named):
            return metro
    return city


# Major hubs and busy airports, for ranking and tie-breaks (airportsdata has no traffic data).
_HUB_CODES = """
    ATL PEK PKX DXB LAX HND ORD LHR HKG PVG SHA CDG AMS DFW CAN FRA IST DEL CGK SIN ICN DEN BKK
    JFK KUL SFO MAD CTU LAS BCN BOM YYZ SEA CLT LGW TFU MCO EWR SZX SVO MUC PHX IAH MIA SYD NRT
    FCO MEX DOH MSP DTW BOS PHL GRU LGA FLL BWI DCA IAD SLC MDW JED RUH AUH CPH ZRH VIE OSL ARN
    HEL DUB BRU LIS ATH WAW PRG BUD MAN EDI DUS HAM BER MXP LIN VCE NAP ORY NCE LYS GVA MEL BNE
    PER AKL JNB CPT CAI ADD NBO LOS CMN TLV AMM BAH MCT KWI DMK MNL TPE KIX ITM GMP CTS FUK HAN
    SGN DPS BLR MAA HYD CCU CMB KHI ISB LHE SCL LIM BOG EZE AEP GIG CGH PTY SJO CUN GDL YVR YUL
    YYC HNL PDX SAN AUS BNA MSY STL TPA DAL HOU OAK SJC SMF RDU PIT CLE CVG IND MCI STN LTN LCY
    DME VKO LED SAW AYT ESB SVQ AGP PMI VLC OPO BGY CIA BLQ FLR KRK OTP SOF BEG ZAG RIX TLL VNO
    KEF GLA BHX BRS HKT CGN STR NUE HAJ BSL TXL CHC WLG ADL OOL RAK TUN ALG ACC DSS DAR KGL JNB
    CMH OMA CWB MDE MLA FAO
"""
HUBS = frozenset(_HUB_CODES.split())

# Words that mark a place without scheduled airline service (or not an airport at all),
# searched as whole words in the name less its city's name: "Columbus" is no bus station
# (CMH), "Pilot Station" is a town, "Cuito Cuanavale" no naval base. "Airfield" and
# "airstrip" say nothing either way (Omaha's Eppley Airfield, Lamu's Manda Airstrip).
_NON_COMMERCIAL = re.compile(
    r"\b(?:heliport|seaplane|air base|air force|army|naval|station|bus|military|glider|"
    r"ranch|private|raf|afb|arb|angb|nas|naf|jrb|mcas)\b",
    re.IGNORECASE,
)
# Airports named as military bases that also have scheduled airline service (joint use):
# airportsdata has no field that says so, so they are listed.
_JOINT_USE_CODES = "ZAZ REU NLU XCR GRK KWA MSJ KUV HIN KHS HDS BEK AIP IXP AAT AOG AEB IWK"
JOINT_USE = frozenset(_JOINT_USE_CODES.split())


def _commercial(code: str, name: str, city: str) -> bool:
    if code in JOINT_USE:
        return True
    for part in re.split(r"[,/]", city):
        if part.strip():
            name = re.sub(re.escape(part.strip()), " ", name, flags=re.IGNORECASE)
    # A base with a civil airport of its own name is joint use: "Charleston Afb/International
    # Airport", "Eglin Afb/Destin-Ft Walton Beach Airport".
    return any(not _NON_COMMERCIAL.search(part) for part in name.split("/"))


# A state, province or country written after a city's name ("Portland, OR", "London Ontario",
# "San Jose CR", "Córdoba, España"): the postal abbreviations of the US and Canada, the full
# names of every subdivision in the data, and countries by code and by name (_build_regions).
_STATE_ABBREVIATIONS = {
    "al": "Alabama", "ak": "Alaska", "az": "Arizona", "ar": "Arkansas", "ca": "California",
    "co": "Colorado", "ct": "Connecticut", "de": "Delaware", "dc": "District of Columbia",
    "fl": "Florida", "ga": "Georgia", "hi": "Hawaii", "id": "Idaho", "il": "Illinois",
    "in": "Indiana", "ia": "Iowa", "ks": "Kansas", "ky": "Kentucky", "la": "Louisiana",
    "me": "Maine", "md": "Maryland", "ma": "Massachusetts", "mi": "Michigan", "mn": "Minnesota",
    "ms": "Mississippi", "mo": "Missouri", "mt": "Montana", "ne": "Nebraska", "nv": "Nevada",
    "nh": "New Hampshire", "nj": "New Jersey", "nm": "New Mexico", "ny": "New York",
    "nc": "North Carolina", "nd": "North Dakota", "oh": "Ohio", "ok": "Oklahoma", "or": "Oregon",
    "pa": "Pennsylvania", "ri": "Rhode Island", "sc": "South Carolina", "sd": "South Dakota",
    "tn": "Tennessee", "tx": "Texas", "ut": "Utah", "vt": "Vermont", "va": "Virginia",
    "wa": "Washington", "wv": "West Virginia", "wi": "Wisconsin", "wy": "Wyoming",
}  # fmt: skip
_PROVINCE_ABBREVIATIONS = {
    "ab": "Alberta", "bc": "British Columbia", "mb": "Manitoba", "nb": "New Brunswick",
    "nl": "Newfoundland and Labrador", "ns": "Nova Scotia", "nt": "Northwest Territories",
    "nu": "Nunavut", "on": "Ontario", "pe": "Prince Edward Island", "qc": "Quebec",
    "sk": "Saskatchewan", "yt": "Yukon",
}  # fmt: skip
# Country names people write that are no country's name in Babel's lists.
_COUNTRY_NAMES = {
    "uk": "GB", "england": "GB", "scotland": "GB", "wales": "GB", "great britain": "GB",
    "usa": "US", "america": "US", "eeuu": "US", "ee uu": "US", "holland": "NL",
}  # fmt: skip
# Languages whose country names are read (the bot's, and its customers' neighbours').
_COUNTRY_NAME_LANGUAGES = ("en", "es", "pt", "fr", "de", "it")
# A qualified name's best match must score this well on the name alone ("london" finds London,
# Ontario at 90); a weaker one is a guess the qualifier must not promote.
QUALIFIED_MIN_SCORE = 80.0

# Words that say nothing about which airport: dropped from names before matching.
_GENERIC = {"airport", "international", "intl", "jetport", "aerodrome", "aeropuerto", "aeroport"}
# The same words in a query ("JFK airport", "aeropuerto de Barajas"), in the languages people
# write them in, and the "de" that follows one; dropped unless the query is a name with them
# ("International Falls").
_QUERY_GENERIC = _GENERIC | {
    "airports", "aeropuertos", "aeroporto", "flughafen", "internacional", "internazionale",
}  # fmt: skip
_CONNECTORS = {"de", "del", "do", "da", "di", "of"}

W_CITY = 1.0  # a city code (all airports)
W_HUB = 0.98  # a major hub or a member of a city code
W_INTERNATIONAL = 0.95
W_OTHER = 0.9
EARTH_RADIUS_KM = 6371.0088


def normalize(text: str) -> str:
    """Lower case, accents removed, punctuation to spaces, spaces collapsed."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(re.sub(r"[^0-9a-z]+", " ", stripped.lower()).split())


@functools.cache
def zone(name: str) -> ZoneInfo:
    """ZoneInfo keeps only a few zones strongly cached; there are a few hundred here."""
    return ZoneInfo(name)


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True, slots=True)
class PlaceInfo:
    """One airport or city code with what ranking and the offline provider need."""

    code: str
    is_city: bool
    name: str
    city: str
    country: str
    tz: str
    lat: float
    lon: float
    weight: float  # importance, 0.9-1.0
    commercial: bool  # plausibly has scheduled service
    members: tuple[str, ...] = ()  # airports of a city code
    subdivision: str = ""  # state or region ("Missouri"); empty for a city code

    def to_proto(self) -> search_pb2.Place:
        return search_pb2.Place(
            code=self.code,
            kind=search_pb2.PLACE_KIND_CITY if self.is_city else search_pb2.PLACE_KIND_AIRPORT,
            name=self.name,
            city_name=self.city,
            country_code=self.country,
            time_zone=self.tz,
            subdivision=self.subdivision,
        )


@dataclass(frozen=True, slots=True)
class Candidate:
    place: PlaceInfo
    score: float


class Places:
    """The index: built once, then read-only (safe to share between coroutines)."""

    def __init__(self, airports: dict[str, dict[str, Any]] | None = None) -> None:
        raw = airports if airports is not None else airportsdata.load("IATA")
        members = {m for _, ms in CITY_CODES.values() for m in ms}
        metro_of = {m: city for city, ms in CITY_CODES.values() for m in ms}
        self.by_code: dict[str, PlaceInfo] = {}
        # The data's own city names stay names the airports are found by.
        self._data_cities: dict[str, str] = {}
        for code, row in raw.items():
            name = str(row["name"])
            commercial = _commercial(code, name, str(row["city"]))
            city = _known_city(code, name, str(row["city"]), metro_of.get(code))
            if city != row["city"]:
                self._data_cities[code] = str(row["city"])
            if code in HUBS or code in members:
                weight = W_HUB
            elif "international" in name.lower():
                weight = W_INTERNATIONAL
            else:
                weight = W_OTHER
            self.by_code[code] = PlaceInfo(
                code=code,
                is_city=False,
                name=name,
                city=city,
                country=str(row["country"]),
                tz=str(row["tz"]),
                lat=float(row["lat"]),
                lon=float(row["lon"]),
                weight=weight,
                commercial=commercial,
                subdivision=str(row.get("subd", "")),
            )
        for code, (city, codes) in CITY_CODES.items():
            present = tuple(c for c in codes if c in self.by_code)
            if code in self.by_code or not present:
                continue  # an airport of that code wins; a city without airports is useless
            primary = self.by_code[present[0]]
            self.by_code[code] = PlaceInfo(
                code=code,
                is_city=True,
                name=f"{city} (all airports)",
                city=city,
                country=primary.country,
                tz=primary.tz,
                lat=primary.lat,
                lon=primary.lon,
                weight=W_CITY,
                commercial=True,
                members=present,
            )
        self._build_text_index()
        self._regions = self._build_regions()
        served = [p for p in self.by_code.values() if p.commercial and not p.is_city]
        # Sorted by latitude so nearest() scans only a band around the point.
        self._by_lat = sorted(served, key=lambda p: p.lat)
        self._lats = [p.lat for p in self._by_lat]

    # -- lookup ------------------------------------------------------------------------------

    def get(self, code: str) -> PlaceInfo | None:
        return self.by_code.get(code)

    @functools.lru_cache(maxsize=200_000)  # noqa: B019 - one Places per process, lives forever
    def distance_km(self, a: str, b: str) -> float:
        """Great-circle distance between two codes' coordinates (memoized: routes repeat)."""
        pa, pb = self.by_code[a], self.by_code[b]
        return haversine_km(pa.lat, pa.lon, pb.lat, pb.lon)

    def airports_of(self, code: str) -> tuple[PlaceInfo, ...]:
        """The airports a code stands for: itself, or a city code's members."""
        place = self.by_code[code]
        if place.is_city:
            return tuple(self.by_code[m] for m in place.members)
        return (place,)

    # -- free text ---------------------------------------------------------------------------

    def _build_text_index(self) -> None:
        # normalized text → [(code, factor)]: factor < 1 for weaker evidence (an airport's own
        # name matters less than the city it serves when people type city names).
        entries: dict[str, dict[str, float]] = {}

        def add(text: str, code: str, factor: float = 1.0) -> None:
            key = normalize(text)
            if key:
                slot = entries.setdefault(key, {})
                slot[code] = max(slot.get(code, 0.0), factor)

        for place in self.by_code.values():
            if not place.commercial:
                continue
            add(place.city, place.code)
            if place.is_city:
                continue
            short = " ".join(w for w in normalize(place.name).split() if w not in _GENERIC)
            add(short, place.code, 0.97)
            # "Arnavutkoy, Istanbul" or "Beauvais/Tille": each part of the city is a name too.
            # The first of a "/" list is the city itself ("La Paz / El Alto": La Paz's airport
            # is in El Alto), as good a match as a city of that name alone ("La Paz", Mexico).
            whole_first = "/" in place.city and "," not in place.city
            for i, part in enumerate(re.split(r"[,/]", place.city)):
                add(part, place.code, 1.0 if whole_first and i == 0 else 0.97)
            if place.code in self._data_cities:  # "Mississauga", "Rionegro"
                add(self._data_cities[place.code], place.code, 0.97)
        for alias, code in ALIASES.items():
            if code in self.by_code:
                add(alias, code)
        self._texts = list(entries)
        self._known_texts = frozenset(entries)
        self._targets = [entries[t] for t in self._texts]
        # Sorted words (with the index of their text) for fast prefix matching ("lond", "heath").
        words: list[tuple[str, int, bool]] = []
        for i, text in enumerate(self._texts):
            for j, word in enumerate(text.split()):
                words.append((text[text.index(word) :] if j else text, i, j == 0))
        words.sort()
        self._prefix_keys = [w for w, _, _ in words]
        self._prefix_refs = [(i, first) for _, i, first in words]

    def _build_regions(self) -> dict[str, frozenset[tuple[str, str]]]:
        """Normalized region name → (country, subdivision) pairs; subdivision "" is the whole
        country. A name may be several ("ca": California and Canada; "georgia": both)."""
        regions: dict[str, set[tuple[str, str]]] = {}

        def add(name: str, country: str, subdivision: str = "") -> None:
            key = normalize(name)
            if key:
                regions.setdefault(key, set()).add((country, subdivision))

        countries = {p.country for p in self.by_code.values()}
        for place in self.by_code.values():
            if place.subdivision:
                add(place.subdivision, place.country, place.subdivision)
        for abbreviation, state in _STATE_ABBREVIATIONS.items():
            add(abbreviation, "US", state)
        for abbreviation, province in _PROVINCE_ABBREVIATIONS.items():
            add(abbreviation, "CA", province)
        for language in _COUNTRY_NAME_LANGUAGES:
            for country, name in Locale.parse(language).territories.items():
                if country in countries:
                    add(name, country)
        for country in countries:
            add(country, country)
        for name, country in _COUNTRY_NAMES.items():
            add(name, country)
        return {key: frozenset(pairs) for key, pairs in regions.items()}

    def resolve(self, query: str, limit: int = 5) -> list[Candidate]:
        """Ranked candidates for free text; tolerant of case, accents and typos."""
        q = self._without_airport_words(normalize(query))
        if not q:
            return []
        code = q.upper() if len(q) == 3 and q.isalpha() else ""
        return list(self._qualified(q, limit) or self._resolve(q, code, limit))

    def _without_airport_words(self, q: str) -> str:
        """ "jfk airport" → "jfk", "aeropuerto de barajas" → "barajas": names are indexed
        without those words, so they only pulled the query away from its place."""
        if q in self._known_texts:
            return q
        words = [w for w in q.split() if w not in _QUERY_GENERIC]
        if len(words) == len(q.split()):
            return q
        while words and words[0] in _CONNECTORS:
            words.pop(0)
        return " ".join(words) or q

    @functools.lru_cache(maxsize=20_000)  # noqa: B019 - one Places per process, lives forever
    def _qualified(self, q: str, limit: int) -> tuple[Candidate, ...]:
        """A name and then a state, province or country ("portland or", "london ontario"):
        the name's candidates in that region, ranked as the name alone ranks them. Nothing
        when the whole is itself a name ("ciudad de mexico") or the region has none."""
        if q in self._known_texts:
            return ()
        words = q.split()
        for size in (3, 2, 1):
            if len(words) <= size:
                continue
            regions = self._regions.get(" ".join(words[-size:]))
            if regions is None:
                continue
            inside = tuple(
                c
                for c in self._resolve(" ".join(words[:-size]), "", 50)
                if any(
                    (a.country, "") in regions or (a.country, a.subdivision) in regions
                    for a in self.airports_of(c.place.code)  # a city code by its airports
                )
            )
            if inside and inside[0].score >= QUALIFIED_MIN_SCORE:
                return inside[:limit]
        return ()

    # The fuzzy scans cost ~10 ms over ~11k names, on the service's only event loop; the data
    # is static and users repeat the same few hundred places, so answers are memoized.
    @functools.lru_cache(maxsize=20_000)  # noqa: B019 - one Places per process, lives forever
    def _resolve(self, q: str, exact_code: str, limit: int) -> tuple[Candidate, ...]:
        text_scores: dict[int, float] = {}

        def note(index: int, score: float) -> None:
            if score > text_scores.get(index, 0.0):
                text_scores[index] = score

        for _, score, index in process.extract(
            q, self._texts, scorer=fuzz.ratio, score_cutoff=72, limit=300
        ):
            note(index, score)
        if len(q) >= 2:
            # The query is itself a name ("porto alegre", "santiago de compostela"): a name
            # that is only some of its words ("porto") is weaker evidence still.
            named = q in self._known_texts
            for text, score, index in process.extract(
                q, self._texts, scorer=fuzz.token_set_ratio, score_cutoff=80, limit=300
            ):
                # A two-letter name is a whole word of many queries ("la" in "la habana", "la
                # coruna"): it must be the query itself (fuzz.ratio above), not one of its words.
                # 0.91: a hub that is one word of the query ("Porto" in "Porto Alegre") must
                # not outrank the place the whole query names (0.91 * 0.98 < 0.9); and when
                # the query is that name, 0.87 keeps even a city code more than the bot's tie
                # margin (2 points) behind it, so the user is not asked which of the two.
                if len(text) > 2:
                    weaker = named and len(text) < len(q)
                    note(index, (0.87 if weaker else 0.91) * score)
        if len(q) >= 5:
            for text, score, index in process.extract(
                q, self._texts, scorer=fuzz.partial_ratio, score_cutoff=85, limit=300
            ):
                # Only the query inside a longer name ("heathrow" in "london heathrow"), never
                # a short name inside the query ("la" inside "eilat").
                if len(text) >= len(q):
                    note(index, 0.85 * score)
        if len(q) >= 3:
            start = bisect.bisect_left(self._prefix_keys, q)
            end = bisect.bisect_left(self._prefix_keys, q + "\uffff", lo=start)
            for k in range(start, min(end, start + 500)):
                index, first = self._prefix_refs[k]
                coverage = len(q) / len(self._prefix_keys[k])
                note(index, (85 if first else 80) + 14 * coverage)

        best: dict[str, float] = {}
        for index, score in text_scores.items():
            for code, factor in self._targets[index].items():
                value = score * factor * self.by_code[code].weight
                if value > best.get(code, 0.0):
                    best[code] = value
        # A city code that matches brings its airports along, just below it.
        for code, score in list(best.items()):
            for position, member in enumerate(self.by_code[code].members):
                best[member] = max(best.get(member, 0.0), score - 2 - 0.2 * position)
        if exact_code in self.by_code and ALIASES.get(q, exact_code) != exact_code:
            # A code that is also another place's common abbreviation ("Ldn" for London)
            # counts as a name: the abbreviation's place first, the code's by its importance.
            weight = self.by_code[exact_code].weight
            best[exact_code] = max(best.get(exact_code, 0.0), 100.0 * weight)
        elif exact_code in self.by_code:
            best[exact_code] = 100.0
            for position, member in enumerate(self.by_code[exact_code].members):
                best[member] = max(best.get(member, 0.0), 98.0 - 0.2 * position)
        ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))[:limit]
        return tuple(Candidate(self.by_code[c], round(score, 1)) for c, score in ranked)

    # -- geography ---------------------------------------------------------------------------

    def nearest(self, lat: float, lon: float, limit: int = 3) -> list[tuple[PlaceInfo, float]]:
        """Airports with (plausibly) scheduled service nearest to a point.

        Chosen by distance with small fields counted twice as far (so a major airport 20 km
        away beats an airstrip 15 km away), then listed by true distance.
        """
        radius = 300.0
        while True:
            # Every airport outside the band is farther than ``radius`` (and its effective
            # distance is at least its true one), so once ``limit`` airports inside the band
            # are within ``radius`` effective km, the answer is exact.
            band = radius / 111.0  # km per degree of latitude, rounded down
            lo = bisect.bisect_left(self._lats, lat - band)
            hi = bisect.bisect_right(self._lats, lat + band)
            scored = []
            for place in self._by_lat[lo:hi]:
                km = haversine_km(lat, lon, place.lat, place.lon)
                penalty = 1.0 if place.weight >= W_INTERNATIONAL else 2.0
                scored.append((km * penalty, km, place))
            scored.sort(key=lambda item: item[0])
            within = sum(1 for effective, _, _ in scored[:limit] if effective <= radius)
            if within >= limit or (lo == 0 and hi == len(self._by_lat)):
                break
            radius *= 2
        chosen = sorted(scored[:limit], key=lambda item: item[1])
        return [(place, km) for _, km, place in chosen]
