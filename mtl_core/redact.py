"""Credentials out of logs: passwords in URLs are replaced by ``***`` before anything records them.

A storage or tracking URL may carry a password (``postgresql://user:pw@host/db``)
or a token in its query (``?password=...``, ``?token=...``). Whatever logs such a
value, as an MLflow param or tag or a log line, passes it through
:func:`redact_url` first; :func:`has_credentials` tells a caller that a value must
not be stored at all (a Prefect flow parameter, a deployment's defaults).
"""

from __future__ import annotations

import re

MASK = "***"
# scheme://user:password@ — the password runs to the last '@' before the host, since an
# unencoded '@' in it is common; it never holds a space, '/', '?' or '#'.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@]*):(?P<pw>[^\s/?#]*)@")
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;](?:password|passwd|pwd|secret|token|access_token|api_key|apikey|"
    r"client_secret|sig|signature)=)(?P<value>[^&;#\s]*)",
    re.IGNORECASE,
)


def redact_url(text: str) -> str:
    """``text`` with every URL password and secret query value replaced by ``***``.

    Works on a bare URL and on free text that contains URLs (an error message).
    The user name, host, port, path and other query parameters are kept, so the
    redacted value still says where it points.

    >>> redact_url("postgresql://mtl:s3cret@db:5432/optuna?sslmode=require")
    'postgresql://mtl:***@db:5432/optuna?sslmode=require'
    """
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@" if m["pw"] else m[0], text)
    return _QUERY_SECRET.sub(lambda m: f"{m['head']}{MASK}" if m["value"] else m[0], text)


def has_credentials(text: str) -> bool:
    """Whether ``text`` holds a URL password or secret query value that :func:`redact_url` hides."""
    return redact_url(text) != text
