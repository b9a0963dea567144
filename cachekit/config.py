"""Connection URLs and their query options, as one declarative table.

``Cache.from_url("redis://127.0.0.1:6379/0?socket_timeout=0.2&prefix=shop")`` reads the
options listed in :data:`URL_OPTIONS`; an unknown option is an error that lists the known
ones, never silently ignored. Keyword arguments to ``from_url`` use the same names and win
over the query string.

The URL forms (:data:`SCHEMES`)::

    redis://[[user]:password@]host[:port][/db]        one server (rediss:// for TLS)
    unix://[[user]:password@]/path/to/socket[?db=N]    one server on a Unix socket
    redis+cluster://[[user]:password@]host:port[,host:port...][/0]
        Redis Cluster: any reachable nodes to start from (the client discovers the
        rest); database 0 only
    redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]
        Sentinel: the Sentinel processes, the monitored primary's name and the database;
        the password is the data servers'; ``sentinel_password`` is the Sentinels' own
    memory://                                          one process, for tests

Usage::

    target = parse_url("redis://localhost/1?prefix=shop&max_connections=20")
    target.options["prefix"]     # 'shop'
    nodes = parse_nodes("redis+sentinel://s1:26379,s2:26379/shop/2")
    nodes.addresses, nodes.service, nodes.db     # ((('s1', 26379), ('s2', 26379)), 'shop', 2)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Literal, overload
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from cachekit.exceptions import ConfigurationError

__all__ = [
    "REDIS_DEFAULTS",
    "SCHEMES",
    "URL_OPTIONS",
    "Nodes",
    "ParsedUrl",
    "UrlOption",
    "parse_nodes",
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
    "sentinel_username": UrlOption(str, "redis", "user for the Sentinels (redis+sentinel://)"),
    "sentinel_password": UrlOption(
        str, "redis", "password for the Sentinels (redis+sentinel://; the URL's is the data's)"
    ),
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

SCHEMES: Final = ("redis", "rediss", "unix", "redis+cluster", "redis+sentinel", "memory")

# Options that only one kind of URL can use.
_ONLY: Final[Mapping[str, tuple[str, ...]]] = {
    "sentinel_username": ("redis+sentinel",),
    "sentinel_password": ("redis+sentinel",),
    "ssl_cert_reqs": ("redis", "rediss", "unix"),
    "ssl_ca_certs": ("redis", "rediss", "unix"),
}
_DEFAULT_PORTS: Final = {"redis+cluster": 6379, "redis+sentinel": 26379}


@dataclass(frozen=True, slots=True)
class ParsedUrl:
    """A parsed URL: its scheme, the URL without cachekit's options, and the options."""

    scheme: str
    url: str
    options: Mapping[str, Any]

    def scoped(self, scope: Scope) -> dict[str, Any]:
        """The options that configure ``scope``."""
        return {k: v for k, v in self.options.items() if URL_OPTIONS[k].scope == scope}


def parse_url(url: str, overrides: Mapping[str, Any] | None = None) -> ParsedUrl:
    """Split ``url`` into a :class:`ParsedUrl`, validating every option.

    ``overrides`` (keyword arguments of ``from_url``) are checked against the same table
    and replace values from the query string.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unbalanced IPv6 bracket, say
        raise ConfigurationError(f"malformed URL {_redact(url)}: {exc}") from None
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
    for name in options:
        if name in _ONLY and parts.scheme not in _ONLY[name]:
            raise ConfigurationError(f"option {name} does not apply to {parts.scheme}:// URLs")
    if parts.scheme in _DEFAULT_PORTS:
        parse_nodes(url)  # refuse a malformed address list now, not at first use
        if parts.scheme == "redis+cluster" and options.get("db", 0) != 0:
            raise ConfigurationError("redis+cluster:// has database 0 only; drop the db option")
    # Cut the query by hand: urlunsplit would turn "unix:///path" into "unix:/path".
    bare = url.partition("#")[0].partition("?")[0]
    return ParsedUrl(parts.scheme, bare, options)


_REDIS_ONLY = frozenset(k for k, o in URL_OPTIONS.items() if o.scope != "cache")


@dataclass(frozen=True, slots=True)
class Nodes:
    """The servers a ``redis+cluster://`` or ``redis+sentinel://`` URL names.

    ``addresses`` are the Cluster's startup nodes or the Sentinels; ``service`` is the
    name Sentinel monitors the primary under (``None`` for Cluster); ``db`` the database;
    ``username`` and ``password`` authenticate to the data servers.

    Usage::

        parse_nodes("redis+sentinel://s1:26379/shop").service    # 'shop'
    """

    addresses: tuple[tuple[str, int], ...]
    service: str | None
    db: int
    username: str | None
    password: str | None


def parse_nodes(url: str) -> Nodes:
    """The :class:`Nodes` of a ``redis+cluster://`` or ``redis+sentinel://`` URL.

    Usage::

        parse_nodes("redis+cluster://10.0.0.1:7000,10.0.0.2:7000").addresses
        # (('10.0.0.1', 7000), ('10.0.0.2', 7000))

    Raises :class:`~cachekit.exceptions.ConfigurationError` naming what is malformed.
    """
    scheme, _, rest = url.partition("://")
    if scheme not in _DEFAULT_PORTS:
        raise ConfigurationError(f"{_redact(url)}: not a redis+cluster:// or redis+sentinel:// URL")
    rest = rest.partition("#")[0].partition("?")[0]
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    addresses = tuple(_address(item, _DEFAULT_PORTS[scheme], url) for item in hosts.split(","))
    segments = [unquote(part) for part in path.split("/")] if path else []
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash
    service: str | None = None
    if scheme == "redis+sentinel":
        if not segments or not segments[0]:
            raise ConfigurationError(
                f"{_redact(url)} names no service: use redis+sentinel://host:port/service[/db]"
            )
        service = segments.pop(0)
    if len(segments) > 1:
        raise ConfigurationError(f"{_redact(url)} has an unexpected path after the database")
    db = _database(segments[0], url) if segments else 0
    if scheme == "redis+cluster" and db != 0:
        raise ConfigurationError(f"{_redact(url)}: a Cluster has database 0 only")
    return Nodes(addresses, service, db, unquote(username) or None, unquote(password) or None)


def _address(item: str, default_port: int, url: str) -> tuple[str, int]:
    """``host[:port]`` (IPv6 in brackets) as ``(host, port)``."""
    if item.startswith("["):
        host, _, tail = item[1:].partition("]")
        if tail and not tail.startswith(":"):
            host = ""  # garbage after the bracket: reported below
        port_text = tail[1:]
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ConfigurationError(f"{_redact(url)}: empty or malformed host in {item!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(f"{_redact(url)}: invalid port {port_text!r} for {host}")
    return host, int(port_text)


def _database(text: str, url: str) -> int:
    if not text.isdigit():
        raise ConfigurationError(f"{_redact(url)}: the database must be a number, got {text!r}")
    return int(text)


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
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.partition("://")[0] + "://..."  # unparsable: show nothing that may be secret
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
