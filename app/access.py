"""Who may use the service: a login for the page (Gradio's own login form), a bearer token (or the
same login as HTTP Basic) for the JSON API, and signed, expiring image URLs, because a browser's
<img> request carries neither: an image can be fetched only through a URL that a search handed out.
With no login and no token configured the service is open, and image URLs are plain."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

#: How long an image URL from a search stays valid when access is controlled.
URL_LIFETIME = 3600


class AccessError(ValueError):
    """A credential setting that cannot be used; one line naming it."""


@dataclass
class Access:
    users: list[tuple[str, str]] = field(default_factory=list)
    token: str | None = None
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    @property
    def enabled(self) -> bool:
        return bool(self.users or self.token)

    def allows(self, authorization: str | None) -> bool:
        """Whether an Authorization header value grants the API."""
        if not self.enabled:
            return True
        scheme, _, credential = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and self.token:
            return hmac.compare_digest(credential.strip().encode(), self.token.encode())
        if scheme.lower() == "basic" and self.users:
            try:
                user, _, password = base64.b64decode(credential.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return any(hmac.compare_digest(f"{user}:{password}".encode(), f"{u}:{p}".encode()) for u, p in self.users)
        return False

    def sign(self, image_id: int, now: float | None = None) -> dict[str, str]:
        """Query parameters that let anyone holding them fetch this one image for a while."""
        if not self.enabled:
            return {}
        # rounded up to the next 10 minutes, so a browser's cache sees one URL per image a while
        expires = str(-(-int((now or time.time()) + URL_LIFETIME) // 600) * 600)
        return {"expires": expires, "sig": self._signature(image_id, expires)}

    def signed(self, image_id: int, expires: str | None, sig: str | None) -> bool:
        if not (expires and sig and expires.isdigit()) or int(expires) < time.time():
            return False
        return hmac.compare_digest(sig, self._signature(image_id, expires))

    def _signature(self, image_id: int, expires: str) -> str:
        return hmac.new(self.secret, f"{image_id}:{expires}".encode(), hashlib.sha256).hexdigest()[:32]


def parse_user(text: str, source: str) -> tuple[str, str]:
    user, colon, password = text.strip().partition(":")
    if not (user and colon and password):
        raise AccessError(f"{source}: expected USER:PASSWORD, got {text.strip()[:40]!r}")
    return user, password


def load_access(auth: str | None = None, auth_file: Path | None = None, token: str | None = None) -> Access:
    """From `--auth USER:PASSWORD`, `--auth-file` (one USER:PASSWORD a line, # comments) and
    `--token`; METRIX_AUTH and METRIX_API_TOKEN stand in for the flags, so that secrets need not
    appear in the process list."""
    users = []
    auth = auth or os.environ.get("METRIX_AUTH")
    if auth:
        users.append(parse_user(auth, "--auth"))
    if auth_file is not None:
        try:
            lines = Path(auth_file).read_text().splitlines()
        except OSError as error:
            raise AccessError(f"{auth_file}: cannot read the login file ({error.strerror})") from None
        users += [
            parse_user(line, f"{auth_file} line {n}")
            for n, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
        if not users:
            raise AccessError(f"{auth_file}: no USER:PASSWORD line")
    token = token or os.environ.get("METRIX_API_TOKEN")
    if token is not None and len(token) < 16:
        raise AccessError(
            "--token: use at least 16 characters (e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)"
        )
    return Access(users=users, token=token)


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
