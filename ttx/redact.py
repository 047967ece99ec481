"""Secrets in URLs are never written or shown: `redact_url` is the one place that hides them.

    redact_url("http://user:sk-SECRET@host/v1?api_key=k&x=1")  ->  "http://***@host/v1?api_key=***&x=1"

The userinfo (user and password: either may be the key) and the values of query parameters whose
names look like credentials (api_key, key, token, secret, password, auth, signature, ...) become
`***`. redact_text does it to every URL inside a text (an error message), redact_secrets to every
string inside a JSON-like object (a manifest). Only the standard library: every stage imports it.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

MASK = "***"
# query parameter names that carry a credential (api_key, apikey, access_token, x-api-key, sig, ...)
_SECRET_PARAM = re.compile(r"key|token|secret|passw|pwd|auth|sig|credential|session|cookie", re.I)
# a URL inside a text: scheme://, then anything up to white space or a quote or bracket
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
# userinfo when the URL does not parse: scheme://<userinfo>@
_USERINFO = re.compile(r"(://)[^/?#@\s]*@")


def redact_url(url: str) -> str:
    """url with its userinfo and credential-like query values replaced by *** (module docstring)."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        netloc = f"{MASK}@{host}" if "@" in parts.netloc else parts.netloc
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(secret_param(name) for name, _ in pairs):
                query = "&".join(f"{quote(name, safe='')}="
                                 f"{MASK if secret_param(name) else quote(value, safe='')}"
                                 for name, value in pairs)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:                      # a URL urllib refuses: hide the userinfo by pattern
        return _USERINFO.sub(rf"\1{MASK}@", url)


def secret_param(name: str) -> bool:
    """Whether a query parameter of this name carries a credential."""
    return bool(_SECRET_PARAM.search(name))


def redact_text(text: str) -> str:
    """text with every URL in it redacted (punctuation that ends a sentence is not the URL's)."""
    def one(m: re.Match) -> str:
        url = m.group()
        cut = len(url.rstrip(".,;:!?)]}"))
        return redact_url(url[:cut]) + url[cut:]
    return _URL.sub(one, text) if "://" in text else text


def redact_secrets(obj):
    """A copy of a JSON-like object with every string redacted (keys too)."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, dict):
        return {redact_secrets(k) if isinstance(k, str) else k: redact_secrets(v)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_secrets(v) for v in obj]
    return obj
