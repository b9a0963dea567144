"""Connection URLs and their query options, as one declarative table.

``Cache.from_url("redis://127.0.0.1:6379/0?socket_timeout=0.2&prefix=shop")`` reads the
options listed in :data:`URL_OPTIONS`; an unknown option is an error that lists the known
ones, never silently ignored. Keyword arguments to ``from_url`` use the same names and win
over the query string.

Usage::

    target = parse_url("redis://localhost/1?prefix=shop&max_connections=20")
    target.options["prefix"]     # 'shop'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Literal, overload
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from .exceptions import ConfigurationError

__all__ = [
    "REDIS_DEFAULTS",
    "SCHEMES",
    "URL_OPTIONS",
    "Target",
    "UrlOption",
    "parse_url",
    "seconds_or_zero",
    "spread",
    "to_seconds",
]

Scope = Literal["cache", "redis", "guard"]


def _positive(cast: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = cast(text)
        if value <= 0:
            raise ValueError("must be positive")
        return value

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    return parse


@dataclass(frozen=True, slots=True)
class UrlOption:
    """One query option: how to parse it, whom it configures, what it means."""

    parse: Callable[[str], Any]
    scope: Scope
    help: str


URL_OPTIONS: Final[Mapping[str, UrlOption]] = {
    "prefix": UrlOption(str, "cache", "first segment of every key (default 'cachekit')"),
    "serializer": UrlOption(_choice("json", "msgpack"), "cache", "value format (default json)"),
    "deadline": UrlOption(
        _positive(float), "guard", "seconds one operation may take, retries included (0.25)"
    ),
    "breaker_failures": UrlOption(
        _positive(int), "guard", "consecutive failures that open the circuit breaker (5)"
    ),
    "breaker_cooldown": UrlOption(
        _positive(float), "guard", "seconds the open breaker keeps Redis uncalled (2)"
    ),
    "socket_timeout": UrlOption(_positive(float), "redis", "seconds to wait for a reply"),
    "socket_connect_timeout": UrlOption(_positive(float), "redis", "seconds to connect"),
    "pool_timeout": UrlOption(_positive(float), "redis", "seconds to wait for a free connection"),
    "max_connections": UrlOption(_positive(int), "redis", "connections per pool (per face)"),
    "health_check_interval": UrlOption(float, "redis", "seconds between idle-connection checks"),
    "client_name": UrlOption(str, "redis", "CLIENT SETNAME for every connection"),
    "db": UrlOption(int, "redis", "database number (also the URL path)"),
    "ssl_cert_reqs": UrlOption(_choice("none", "optional", "required"), "redis", "TLS checks"),
    "ssl_ca_certs": UrlOption(str, "redis", "CA bundle path for rediss://"),
}

# The cache owns its time budget: short timeouts, no retry chain (redis-py's default
# retries take 4-10 s against a dead or hung server), and a bounded pool. Above these,
# the guard's ``deadline`` bounds each operation as a whole (cachekit.backends.guard).
REDIS_DEFAULTS: Final[Mapping[str, Any]] = {
    "socket_timeout": 0.25,
    "socket_connect_timeout": 0.25,
    "pool_timeout": 0.25,
    "max_connections": 64,
    "health_check_interval": 0.0,
}

SCHEMES: Final = ("redis", "rediss", "unix", "memory")


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed URL: its scheme, the URL without cachekit's options, and the options."""

    scheme: str
    url: str
    options: Mapping[str, Any]

    def scoped(self, scope: Scope) -> dict[str, Any]:
        """The options that configure ``scope``."""
        return {k: v for k, v in self.options.items() if URL_OPTIONS[k].scope == scope}


def parse_url(url: str, overrides: Mapping[str, Any] | None = None) -> Target:
    """Split ``url`` into a :class:`Target`, validating every option.

    ``overrides`` (keyword arguments of ``from_url``) are checked against the same table
    and replace values from the query string.
    """
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ConfigurationError(
            f"unsupported URL scheme {parts.scheme!r} in {_redact(url)}; "
            f"use one of: {', '.join(s + '://' for s in SCHEMES)}"
        )
    options: dict[str, Any] = {}
    for name, text in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        options[name] = _parse_option(name, text)
    for name, value in (overrides or {}).items():
        _known(name)
        options[name] = value
    if parts.scheme == "memory" and (redis_only := [k for k in options if k in _REDIS_ONLY]):
        raise ConfigurationError(f"memory:// takes no Redis options: {', '.join(redis_only)}")
    # Cut the query by hand: urlunsplit would turn "unix:///path" into "unix:/path".
    bare = url.partition("#")[0].partition("?")[0]
    return Target(parts.scheme, bare, options)


_REDIS_ONLY = frozenset(k for k, o in URL_OPTIONS.items() if o.scope != "cache")


def _known(name: str) -> UrlOption:
    try:
        return URL_OPTIONS[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown option {name!r}; known options: {', '.join(sorted(URL_OPTIONS))}"
        ) from None


def _parse_option(name: str, text: str) -> Any:
    option = _known(name)
    try:
        return option.parse(text)
    except ValueError as exc:
        raise ConfigurationError(f"option {name}={text!r}: {exc}") from None


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


@overload
def to_seconds(ttl: float | timedelta, *, name: str = ...) -> float: ...
@overload
def to_seconds(ttl: None, *, name: str = ...) -> None: ...
@overload
def to_seconds(ttl: float | timedelta | None, *, name: str = ...) -> float | None: ...
def to_seconds(ttl: float | timedelta | None, *, name: str = "ttl") -> float | None:
    """``ttl`` as positive seconds (``None`` passes through); rejects zero and negatives.

    Usage::

        to_seconds(timedelta(minutes=5))   # 300.0
    """
    if ttl is None:
        return None
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    if not seconds > 0:
        raise ConfigurationError(f"{name} must be positive, got {ttl!r}")
    return seconds


@overload
def spread(jitter: float) -> float: ...
@overload
def spread(jitter: None) -> None: ...
def spread(jitter: float | None) -> float | None:
    """A jitter fraction, checked: ``0 <= jitter < 1`` (``None`` passes through)."""
    if jitter is None:
        return None
    if not 0 <= jitter < 1:
        raise ConfigurationError(f"jitter must be in [0, 1), got {jitter!r}")
    return float(jitter)


def seconds_or_zero(value: float | timedelta, name: str) -> float:
    """Like :func:`to_seconds`, with 0 (or a zero timedelta) meaning "off"."""
    return to_seconds(value, name=name) or 0.0 if value else 0.0
