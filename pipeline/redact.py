"""Keep secrets out of manifests, logs and error messages."""

from __future__ import annotations

import os
import re

_SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL)", re.IGNORECASE)
# Query strings of presigned URLs carry signatures and temporary credentials.
_SIGNED_QUERY = re.compile(r"([?&](X-Amz-[A-Za-z-]+|Signature|AWSAccessKeyId|key|token)=)[^&\s'\"]+", re.IGNORECASE)


def secret_values() -> list[str]:
    """Values of environment variables whose names say they are secrets (long enough to be worth hiding)."""
    return [v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 6]


def redact(text: str) -> str:
    return redactor()(text)


def redactor():
    """`redact` with the secrets the environment holds now, for writers of many records (reading the whole
    environment on every record cost more than writing it)."""
    values = secret_values()

    def apply(text: str) -> str:
        for value in values:
            text = text.replace(value, "***")
        return _SIGNED_QUERY.sub(r"\1***", text)

    return apply
