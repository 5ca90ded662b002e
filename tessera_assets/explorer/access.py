"""Who may use a shared explorer: access tokens, one a user, or an explicit read-only mode.

On loopback the explorer is one person's (`LOCAL_USER`), as before. Bound to any other address it
refuses to start without a tokens file or `--read-only` (`check_exposure`): whoever can reach the
port would otherwise share write access to the labels and the training. With tokens, every API, tile
and file request carries one: `Authorization: Bearer <token>` (scripts) or the `tessera_token` cookie
that `POST /api/login` sets for the page (HttpOnly, SameSite=Strict, so no script reads it and no
other site sends it). A token never travels in a URL, so it never lands in a browser's history, a
proxy's log or a Referer. Tokens are compared as SHA-256 digests in constant time; the file is read
once at start and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from resources.errors import ConfigurationError

LOCAL_USER = "local"
COOKIE = "tessera_token"
MIN_TOKEN_CHARS = 24
USER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Access:
    """The explorer's access rule: open to one local user, tokens by user, or read-only for all."""

    tokens: dict[bytes, str] = field(default_factory=dict)  # sha256(token) -> user name
    read_only: bool = False

    @property
    def needs_token(self) -> bool:
        return bool(self.tokens)

    def user(self, headers, cookies) -> str | None:
        """The user a request's token names; None for a missing or wrong one. Without tokens every
        request is the local user's (loopback, or read-only)."""
        if not self.tokens:
            return LOCAL_USER
        scheme, _, token = headers.get("authorization", "").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else cookies.get(COOKIE, "")
        return self.user_of(token)

    def user_of(self, token: str) -> str | None:
        if not token or len(token) > 512:
            return None
        digest = _digest(token)
        found = None
        for known, name in self.tokens.items():  # every entry compared, in constant time each
            if hmac.compare_digest(known, digest):
                found = name
        return found


def load_tokens(path: str | Path) -> dict[bytes, str]:
    """A tokens file: a YAML mapping of user name to token (`alice: <at least 24 characters>`)."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigurationError(f"no tokens file at {path}") from None
    except yaml.YAMLError:
        raise ConfigurationError(f"{path}: not a YAML mapping of user name to token") from None
    if not isinstance(document, dict) or not document:
        raise ConfigurationError(f"{path}: must map each user name to a token (alice: <token>)")
    tokens: dict[bytes, str] = {}
    for name, token in document.items():
        name = str(name)
        if not USER_NAME.match(name):
            raise ConfigurationError(f"{path}: user name {name[:40]!r} must be 1-32 of a-z, 0-9, _ and -")
        if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS:
            raise ConfigurationError(f"{path}: the token of {name} must be a string of at least {MIN_TOKEN_CHARS} "
                                     "characters (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')")
        if _digest(token) in tokens:
            raise ConfigurationError(f"{path}: {name} has the same token as {tokens[_digest(token)]}")
        tokens[_digest(token)] = name
    return tokens


def check_exposure(host: str, tokens_file: str | None, read_only: bool) -> Access:
    """The access rule for a bind address: anything beyond loopback needs tokens or read-only."""
    tokens = load_tokens(tokens_file) if tokens_file else {}
    if host.strip("[]") not in LOOPBACK and not tokens and not read_only:
        raise ConfigurationError(
            f"the explorer on {host} would let anyone who reaches the port label and train as you: give "
            "--tokens FILE (a YAML mapping of user name to token) or --read-only")
    return Access(tokens, read_only)
