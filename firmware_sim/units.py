"""Engineering units as OPC-UA ``EUInformation`` with UNECE Rec. 20 codes.

OPC-UA Part 8 §5.6.3: ``NamespaceUri`` is the UNECE URI and ``UnitId`` packs
the common code's ASCII characters into an Int32 (``(c0<<16)|(c1<<8)|c2``).
Unknown units get ``UnitId = -1`` and keep their display name.
"""

from __future__ import annotations

from typing import Final

from asyncua import ua

UNECE_URI: Final = "http://www.opcfoundation.org/UA/units/un/cefact"

#: unit symbol → (UNECE common code, description)
UNITS: Final[dict[str, tuple[str, str]]] = {
    "°C": ("CEL", "degree Celsius"),
    "K": ("KEL", "kelvin"),
    "mm/s": ("C16", "millimetre per second"),
    "m/s²": ("MSK", "metre per second squared"),
    "g": ("K94", "standard acceleration of free fall"),
    "bar": ("BAR", "bar"),
    "kPa": ("KPA", "kilopascal"),
    "MPa": ("MPA", "megapascal"),
    "A": ("AMP", "ampere"),
    "V": ("VLT", "volt"),
    "kW": ("KWT", "kilowatt"),
    "rpm": ("RPM", "revolutions per minute"),
    "Hz": ("HTZ", "hertz"),
    "%": ("P1", "percent"),
    "l/min": ("L2", "litre per minute"),
}


def unit_id(code: str) -> int:
    """Pack a UNECE common code (2-3 ASCII characters) into the OPC-UA UnitId."""
    out = 0
    for ch in code:
        out = (out << 8) | ord(ch)
    return out


def eu_information(unit: str) -> ua.EUInformation:
    """The ``EUInformation`` for a unit symbol such as ``"°C"`` or ``"bar"``."""
    code = UNITS.get(unit)
    if code is None:
        return ua.EUInformation(
            NamespaceUri=UNECE_URI,
            UnitId=-1,
            DisplayName=ua.LocalizedText(unit),
            Description=ua.LocalizedText(unit),
        )
    return ua.EUInformation(
        NamespaceUri=UNECE_URI,
        UnitId=unit_id(code[0]),
        DisplayName=ua.LocalizedText(unit),
        Description=ua.LocalizedText(code[1]),
    )
