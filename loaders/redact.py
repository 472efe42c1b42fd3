"""Strip credentials from uris and error text before they reach a log, an exception or a result.

Three kinds of secret travel with storage uris: userinfo (`https://user:pass@host/...`), the query
of a signed URL (`?X-Amz-Credential=...&X-Amz-Signature=...`, GCS `X-Goog-Signature`, Azure SAS
`sig=`), and storage options echoed by a library into an error (`'secret': '...'`). `redact` removes
all three from any text; storage options themselves are never formatted anywhere in this package.
"""

from __future__ import annotations

import re

MASK = "***"

# Query parameters whose presence makes the whole query a secret (names lower-cased).
_SIGNING_PARAMS = frozenset({
    "x-amz-signature", "x-amz-credential", "x-amz-security-token",
    "x-goog-signature", "x-goog-credential", "signature", "sig", "token", "access_token",
    "id_token", "refresh_token", "api_key", "apikey", "key", "secret", "password", "credential",
    "awsaccesskeyid", "policy", "x-ms-signature", "se_token",
})

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)[^/?#@]*@")

# `name=value` or `'name': 'value'` outside URLs (dict reprs, header dumps, botocore messages).
_ASSIGNMENT = re.compile(
    r"""(?ix)
    (\b(?:aws_secret_access_key|aws_session_token|aws_access_key_id|secret_access_key|secret
        |password|passwd|token|access_token|signature|credential|x-amz-signature|x-amz-credential
        |x-amz-security-token|x-goog-signature|x-goog-credential|sig|api_key|apikey)
     ['"]?\s*[:=]\s*)
    (['"]?)[^'"\s&,;}]+\2
    """
)
# Header dumps: the whole value of an Authorization header, and bare bearer tokens.
_AUTH_HEADER = re.compile(
    r"(?i)\b((?:proxy-)?authorization|x-api-key)(['\"]?\s*[:=]\s*)(['\"]?)[^'\"\n]+")
_BEARER = re.compile(r"\bBearer\s+[A-Za-z0-9\-._~+/]+=*")


def _redact_url(match: re.Match) -> str:
    url = match.group(0)
    url = _USERINFO.sub(lambda m: m.group(1) + MASK + "@", url)
    base, sep, query = url.partition("?")
    if sep:
        fragment = ""
        if "#" in query:
            query, _, fragment = query.partition("#")
            fragment = "#" + fragment
        names = {part.split("=", 1)[0].lower() for part in re.split(r"[&;]", query) if part}
        if names & _SIGNING_PARAMS:
            # A signed URL: every parameter is part of the signature's context, drop them all.
            return f"{base}?{MASK}{fragment}"
    return url


def redact(text: object) -> str:
    """Return `text` (a uri, an error message, anything str() accepts) with credentials masked.

    >>> redact("https://u:p@host/a.mp4?X-Amz-Signature=abc&X-Amz-Credential=k")
    'https://***@host/a.mp4?***'
    """
    out = _URL.sub(_redact_url, str(text))
    out = _AUTH_HEADER.sub(lambda m: m.group(1) + m.group(2) + m.group(3) + MASK, out)
    out = _ASSIGNMENT.sub(lambda m: m.group(1) + MASK, out)
    return _BEARER.sub("Bearer " + MASK, out)
