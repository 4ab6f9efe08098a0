"""Passwords out of every line autotune prints: URLs, connection strings, and the secrets of the storage in use.

A storage URL can carry a password in any form libpq or SQLAlchemy accept: ``user:secret@host`` (the secret
percent-encoded, or holding ``:``), ``?password=secret`` (``sslpassword``, ``passwd``, a percent-encoded key),
or a libpq ``password=secret`` keyword string inside a message. `redact` masks each of those; and since a
driver's error may quote a password outside any URL, the secrets of the URL in use (`url_secrets`) are masked
wherever they appear, raw, percent-decoded or percent-encoded.
"""

from __future__ import annotations

import re
from typing import Iterable
from urllib.parse import quote, unquote

MASK = "***"
_SECRET_KEY = re.compile(r"pass|pwd|secret|token", re.IGNORECASE)
"""A query or keyword name whose value is a secret (password, passwd, sslpassword, pwd, secret, token)."""
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>[^\s'\"<>]*)")
_QUERY_PAIR = re.compile(r"(?P<sep>[?&;])(?P<key>[^=&;#]*)=(?P<value>[^&;#]*)")
_KEYWORD = re.compile(r"(?P<key>\b[A-Za-z_]*(?:pass|pwd|secret|token)[A-Za-z_]*)(?P<eq>\s*=\s*)"
                      r"(?P<value>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,)'\"]+)", re.IGNORECASE)
_MAPPING = re.compile(r"(?P<key>(['\"])\w*(?:pass|pwd|secret|token)\w*\2\s*:\s*)(?P<value>'[^']*'|\"[^\"]*\")",
                      re.IGNORECASE)
MIN_SECRET = 3
"""Shorter known secrets are not masked wherever they appear: masking every 'ab' would garble each message
and a two-character password is no secret anyway; URL forms are masked whatever their length."""


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every password masked: in URLs, in keyword strings, and each of ``secrets`` anywhere."""
    text = _URL.sub(_redact_url, str(text))
    text = _KEYWORD.sub(lambda m: f"{m.group('key')}{m.group('eq')}{MASK}", text)
    text = _MAPPING.sub(lambda m: f"{m.group('key')}'{MASK}'", text)
    for secret in sorted(_variants(secrets), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def url_secrets(url: str | None) -> set[str]:
    """The passwords a storage URL carries (userinfo and secret query values), as written in it."""
    found: set[str] = set()
    match = _URL.match(url or "")
    if not match:
        return found
    rest = match.group("rest")
    userinfo, at, _ = rest.rpartition("@")
    if at and ":" in userinfo:
        found.add(userinfo.split(":", 1)[1])
    for pair in _QUERY_PAIR.finditer(rest[rest.find("?"):] if "?" in rest else ""):
        if _SECRET_KEY.search(unquote(pair.group("key"))) and pair.group("value"):
            found.add(pair.group("value"))
    return found


def unencoded_at_in_password(url: str) -> bool:
    """Whether a URL's userinfo holds a raw ``@``: SQLAlchemy would end the password at the first one and take
    the rest for the host name, which then appears in its errors."""
    match = _URL.match(url)
    if not match:
        return False
    authority = match.group("rest").split("?", 1)[0]
    return authority.count("@") > 1


def _redact_url(match: re.Match[str]) -> str:
    rest = match.group("rest")
    # the userinfo ends at the last '@': a password may hold '@', ':' or '/' (over-masking a query's '@' is safe)
    userinfo, at, tail = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:{MASK}@{tail}"
    if "?" in rest:
        head, _, query = rest.partition("?")
        query = _QUERY_PAIR.sub(_redact_pair, "?" + query)[1:]
        rest = f"{head}?{query}"
    return match.group("scheme") + rest


def _redact_pair(pair: re.Match[str]) -> str:
    if not _SECRET_KEY.search(unquote(pair.group("key"))):
        return pair.group(0)
    return f"{pair.group('sep')}{pair.group('key')}={MASK}"


def _variants(secrets: Iterable[str]) -> set[str]:
    found = set()
    for secret in secrets:
        for form in (secret, unquote(secret), quote(unquote(secret), safe=""), quote(unquote(secret))):
            if len(form) >= MIN_SECRET:
                found.add(form)
    return found
