"""Access tokens: HS256 JWTs naming a user (`sub`) and a database session (`sid`).

The signature and `exp` are checked here; whether the session is still live is the database's
answer (auth.py), so logout and revocation take effect at once.
"""

from __future__ import annotations

import logging
import os
import secrets
from datetime import datetime, timedelta
from pathlib import Path

import jwt

from service.config import Settings
from service.sqlite_backend import sqlite_path

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["sub", "sid", "iat", "exp"]

log = logging.getLogger("service.tokens")


class InvalidToken(Exception):
    """The token is malformed, forged, of another algorithm, or expired."""


def issue_access_token(signing_key: str, user_id: int, session_id: int, now: datetime, ttl: timedelta) -> str:
    claims = {"sub": str(user_id), "sid": session_id, "iat": now, "exp": now + ttl}
    return jwt.encode(claims, signing_key, algorithm=ALGORITHM)


def read_access_token(signing_key: str, token: str) -> tuple[int, int]:
    """(user id, session id) from a token whose signature and expiry hold; InvalidToken otherwise."""
    try:
        # Only HS256 is accepted: `none`, HS512, RS256 and every other header is refused here.
        claims = jwt.decode(token, signing_key, algorithms=[ALGORITHM], options={"require": REQUIRED_CLAIMS})
        user_id, session_id = int(claims["sub"]), claims["sid"]
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise InvalidToken(exc.__class__.__name__) from None
    if not isinstance(session_id, int) or isinstance(session_id, bool) or user_id <= 0 or session_id <= 0:
        raise InvalidToken("claims")
    return user_id, session_id


def secret_key_path(settings: Settings) -> Path:
    """Where a generated key is kept: beside the SQLite file, or ./data/ for PostgreSQL."""
    if settings.is_sqlite:
        return Path(sqlite_path(settings.database_url)).parent / "secret_key"
    return Path("data") / "secret_key"


def signing_key(settings: Settings) -> str:
    """SECRET_KEY, or the key generated on first start (owner-only file) that every worker shares."""
    if settings.secret_key:
        return settings.secret_key
    path = secret_key_path(settings)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".secret_key.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
        try:
            # A hard link appears whole or not at all: workers racing here all end up reading one key.
            os.link(draft, path)
            log.warning("SECRET_KEY is not set: generated one in %s; set SECRET_KEY in production", path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()
