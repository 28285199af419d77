"""Content negotiation for /metrics: the exposition format and the encoding a scraper takes."""

from __future__ import annotations

import re


def accepts_openmetrics(accept: str) -> bool:
    """Whether ``Accept`` names the OpenMetrics text format (Prometheus asks for it first)."""
    return any(
        part.split(";")[0].strip() == "application/openmetrics-text" for part in accept.split(",")
    )


#: RFC 9110 section 12.4.2: a weight is 0 to 1 with at most three decimals.
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


def _coding_weight(element: str) -> tuple[str, float]:
    """A coding and its weight; a weight that is not a valid qvalue makes it unacceptable."""
    coding, *parameters = element.split(";")
    weight = 1.0
    for parameter in parameters:
        name, _, value = parameter.strip().partition("=")
        if name.strip().lower() == "q":
            value = value.strip()
            weight = float(value) if _QVALUE.fullmatch(value) else 0.0
    return coding.strip().lower(), weight


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` allows gzip, by RFC 9110 section 12.5.3.

    gzip (or its alias x-gzip) is acceptable when listed with a weight above 0, or, when not
    listed, when ``*`` is listed with a weight above 0. ``q=0`` means "not acceptable"; an
    invalid weight (``q=-1``, ``q=NaN``, ``q=2``) makes that element unacceptable too, so
    the answer falls back to no encoding, which is always allowed here.
    """
    gzip_weight: float | None = None
    any_weight: float | None = None
    for element in accept_encoding.split(","):
        coding, weight = _coding_weight(element)
        if coding in ("gzip", "x-gzip"):
            gzip_weight = max(weight, gzip_weight or 0.0)
        elif coding == "*":
            any_weight = weight
    if gzip_weight is not None:
        return gzip_weight > 0
    return any_weight is not None and any_weight > 0
