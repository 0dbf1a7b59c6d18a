"""Credentials out of every text sweeper shows or keeps: one `redact` for URLs (`--storage`,
`--artifacts`, MLFLOW_TRACKING_URI) and whole error texts (boto3, SQLAlchemy, MLflow quote URLs
and connection settings in their messages), applied before anything is printed, written to a
trial's log, stored in the study or shown in the report."""

from __future__ import annotations

import os
import re

HIDDEN = "***"
# a query parameter, setting or environment variable named like one of these holds a secret
_SECRET_NAME = r"[\w.-]*(?:password|passwd|pwd|token|secret|key|signature|credential)[\w.-]*|sig"
# scheme://userinfo@: everything before the last '@' of the URL's first word (user:password,
# a user alone, a token alone; a password with an unencoded '/' or '@' included)
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^\s@'\"<>]*@")
# name=value, in a URL's query or in free text (libpq's "password=x", S3's X-Amz-Signature=...)
_ASSIGNED = re.compile(rf"(?i)(?<![\w.-])({_SECRET_NAME})(\s*=\s*)('[^']*'|\"[^\"]*\"|[^\s&#'\",;)\]}}]*)")
# 'name': 'value' in a printed dict
_QUOTED = re.compile(rf"(?i)(['\"](?:{_SECRET_NAME})['\"]\s*:\s*)('[^']*'|\"[^\"]*\")")
_ENV_SECRET = re.compile(rf"(?i)^(?:{_SECRET_NAME})$|_(?:PASSWORD|TOKEN|SECRET|KEY)(?:_|$)")
_MIN_ENV_SECRET = 6  # shorter values (flags, numbers) would hide ordinary words


def redact(text: str) -> str:
    """`text` with every credential replaced by ***: URL userinfo, secret-named parameters and
    settings, and the values of secret-named environment variables (AWS_SECRET_ACCESS_KEY,
    MLFLOW_TRACKING_PASSWORD, PGPASSWORD...) wherever they appear."""
    text = str(text)
    for name, value in os.environ.items():
        if len(value) >= _MIN_ENV_SECRET and _ENV_SECRET.search(name) and value in text:
            text = text.replace(value, HIDDEN)
    text = _USERINFO.sub(rf"\g<1>{HIDDEN}@", text)
    text = _ASSIGNED.sub(lambda m: m[1] + m[2] + HIDDEN, text)
    return _QUOTED.sub(lambda m: m[1] + repr(HIDDEN), text)
