"""Emergency numbers: the default list for a country, and which emergency number a dialled string means.

A phone system must connect an emergency call whatever else is configured: the resolver asks
:func:`emergency_number` before anything else (an extension, the embedding application's hook, the caller's
outbound scope), so an employee restricted to internal calls still reaches 112. The numbers come from the
directory (``[server] emergency_numbers``); without that key, :func:`default_emergency_numbers` gives the
ones of the office's country (``country_code``), and 112 for a country this table does not know.

Dialled forms: the number itself (``112``), the number in international form with the office's own
country code (``+49 112``, ``0049 112``), which some people and some phones dial, and the number after a bare
``+`` or international prefix (``+112``, ``00112``), which people try too. None of these is an extension
(1–4 digits without prefix), and a country code with a short number after it is no real E.164 number, so
reading them as the emergency number takes nothing away.

The call goes to the trunk with the number itself in the Request-URI (``sip:112@trunk``): an emergency number
is a national short code, not an E.164 number, and providers route it to the emergency service responsible
for the caller's location.

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Final

from .dialstring import DialKind, DialString, NumberingPlan

__all__ = [
    "EMERGENCY_NUMBERS",
    "EMERGENCY_NUMBER_RE",
    "UNKNOWN_COUNTRY",
    "default_emergency_numbers",
    "emergency_number",
]

#: What an emergency number looks like: 2–6 digits (``15`` in France, ``112``, ``10111`` in South Africa).
EMERGENCY_NUMBER_RE: Final = re.compile(r"[0-9]{2,6}")

#: The emergency numbers of a country, by country calling code: 112 in every EU and EEA country (EU
#: Directive 2018/1972, art. 109) and the national numbers beside it that the public knows.
EMERGENCY_NUMBERS: Final[Mapping[str, tuple[str, ...]]] = {
    "1": ("911",),  # North American Numbering Plan
    "7": ("112", "101", "102", "103"),  # Russia, Kazakhstan
    "27": ("10111", "10177", "112"),  # South Africa
    "30": ("112", "100", "166", "199"),  # Greece
    "31": ("112",),  # Netherlands
    "32": ("112", "100", "101"),  # Belgium
    "33": ("112", "15", "17", "18"),  # France
    "34": ("112", "091", "092", "062", "061", "080", "085"),  # Spain
    "36": ("112", "104", "105", "107"),  # Hungary
    "39": ("112", "113", "115", "118"),  # Italy
    "40": ("112",),  # Romania
    "41": ("112", "117", "118", "144"),  # Switzerland
    "43": ("112", "122", "133", "144"),  # Austria
    "44": ("999", "112"),  # United Kingdom
    "45": ("112",),  # Denmark
    "46": ("112",),  # Sweden
    "47": ("112", "110", "113"),  # Norway
    "48": ("112", "997", "998", "999"),  # Poland
    "49": ("112", "110"),  # Germany
    "52": ("911",),  # Mexico
    "55": ("190", "192", "193"),  # Brazil
    "61": ("000", "112"),  # Australia
    "64": ("111",),  # New Zealand
    "81": ("110", "119"),  # Japan
    "86": ("110", "119", "120"),  # China
    "90": ("112",),  # Turkey
    "91": ("112", "100", "101", "102"),  # India
    "351": ("112",),  # Portugal
    "352": ("112", "113"),  # Luxembourg
    "353": ("112", "999"),  # Ireland
    "354": ("112",),  # Iceland
    "356": ("112",),  # Malta
    "357": ("112", "199"),  # Cyprus
    "358": ("112",),  # Finland
    "359": ("112",),  # Bulgaria
    "370": ("112",),  # Lithuania
    "371": ("112",),  # Latvia
    "372": ("112",),  # Estonia
    "385": ("112", "192", "193", "194"),  # Croatia
    "386": ("112", "113"),  # Slovenia
    "420": ("112", "150", "155", "158"),  # Czechia
    "421": ("112", "150", "155", "158"),  # Slovakia
    "423": ("112", "117", "118", "144"),  # Liechtenstein
}

#: The list for a country :data:`EMERGENCY_NUMBERS` does not know: 112, which GSM phones and many networks
#: route everywhere (the directory warns: set ``emergency_numbers``).
UNKNOWN_COUNTRY: Final = ("112",)


def default_emergency_numbers(country_code: str) -> tuple[str, ...]:
    """The emergency numbers of the country with ``country_code`` (:data:`UNKNOWN_COUNTRY` if unknown)."""
    return EMERGENCY_NUMBERS.get(country_code, UNKNOWN_COUNTRY)


def emergency_number(dialled: DialString, numbers: Collection[str], plan: NumberingPlan) -> str | None:
    """The emergency number among ``numbers`` that ``dialled`` means, else None: the number itself
    (``112``), in international form with ``plan``'s country code (``+49 112``, ``0049 112``), or after a
    bare ``+`` or international prefix (``+112``, ``00112``). Post-dial digits are not looked at: a call for
    help is never refused over them."""
    digits = dialled.digits
    if dialled.kind is DialKind.INTERNATIONAL:
        prefixes: tuple[str, ...] = ("", plan.country_code)
    else:
        prefixes = ("", plan.international_prefix + plan.country_code, plan.international_prefix)
    for prefix in prefixes:
        if digits.startswith(prefix) and digits[len(prefix) :] in numbers:
            return digits[len(prefix) :]
    return None
