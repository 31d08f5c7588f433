"""Request headers parsed strictly: a value that does not follow its grammar is refused with a 4xx
that names the header, or (``Last-Event-ID``) treated as absent; never a 500.

Starlette decodes header bytes as Latin-1, so any byte can arrive: ``str.isdigit()`` is true for
``"²"`` and ``int()`` then raises. Every grammar here is written with explicit ASCII classes.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

from fastapi import HTTPException

# The event ids this API sends are steps: ASCII digits. Optional whitespace around a field value
# is not part of it (RFC 9110 5.5).
_EVENT_ID = re.compile(r"[0-9]{1,32}")
# RFC 9110 8.8.3: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE; etagc = %x21 / %x23-7E / obs-text.
_ENTITY_TAG = re.compile(r'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"')
_TAG = _ENTITY_TAG.pattern
_TAG_LIST = re.compile(rf"[ \t]*{_TAG}(?:[ \t]*,[ \t]*{_TAG})*[ \t]*")
# RFC 9110 11.4: credentials = auth-scheme [ 1*SP token68 ]; keys are visible ASCII (app.db.keys).
_CREDENTIALS = re.compile(r"[ \t]*([A-Za-z0-9!#$%&'*+.^_`|~-]+)(?: +([\x21-\x7e]+))?[ \t]*")
# Printable ASCII, no leading or trailing whitespace; short enough that the owner-scoped form
# ``{owner}:{key}`` (owner ≤ 64) fits the 255-character column.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$"
IDEMPOTENCY_KEY_MAX = 190


class MalformedAuthorizationError(ValueError):
    """The Authorization header is not ``Bearer <key>``."""


def event_id(value: str | None) -> int | None:
    """The step a ``Last-Event-ID`` names, or None: a value that is no id this API sent (an
    EventSource may carry one from elsewhere) means "from the start", as no header does."""
    if value is None:
        return None
    match = _EVENT_ID.fullmatch(value.strip(" \t"))
    return int(match.group()) if match is not None else None


def entity_tags(value: str | None) -> list[str] | None:
    """The entity tags of an ``If-None-Match`` (``["*"]`` for any); None when absent. A value
    outside the grammar is a 400: a poller would otherwise never get its 304, silently."""
    if value is None or not value.strip(" \t"):
        return None
    if value.strip(" \t") == "*":
        return ["*"]
    if _TAG_LIST.fullmatch(value) is None:
        raise HTTPException(400, "malformed If-None-Match header: expected \"*\" or a "
                                 "comma-separated list of entity tags such as W/\"abc\"")
    return _ENTITY_TAG.findall(value)


def bearer_token(value: str) -> str:
    """The key of ``Authorization: Bearer <key>``; raises MalformedAuthorizationError."""
    match = _CREDENTIALS.fullmatch(value)
    if match is None or match.group(1).lower() != "bearer" or match.group(2) is None:
        raise MalformedAuthorizationError("malformed Authorization header: expected "
                                          "'Bearer <key>'")
    return match.group(2)


_UNSAFE_ASCII = re.compile(r"[^A-Za-z0-9_.-]+")
_DOTS = re.compile(r"\.{2,}")


def _token(text: str, allowed: re.Pattern[str] | None) -> str:
    """``text`` with every run of other characters made one ``_``, no ``..``, and no dot, dash
    or underscore at either end: a file name on every system, never a path or a hidden file."""
    if allowed is not None:
        text = allowed.sub("_", text)
    else:  # letters and digits of any script survive (the filename* form)
        text = re.sub(r"_+", "_", "".join(
            ch if ch in "-_." or unicodedata.category(ch)[0] in "LN" else "_" for ch in text))
    return _DOTS.sub(".", text).strip("._-")


def attachment(name: str, experiment_id: object, suffix: str) -> str:
    """A ``Content-Disposition`` for a download named after an experiment: the user's name is
    reduced to a safe ASCII token plus the id (``filename``); a name with other letters also
    gets the RFC 6266 / 8187 ``filename*`` form, which clients that know it prefer."""
    ascii_name = "-".join(filter(None, (_token(name, _UNSAFE_ASCII), str(experiment_id))))
    value = f'attachment; filename="{ascii_name}{suffix}"'
    unicode_name = "-".join(filter(None, (_token(name, None), str(experiment_id))))
    if unicode_name != ascii_name:
        value += f"; filename*=UTF-8''{quote(unicode_name + suffix, safe='')}"
    return value
