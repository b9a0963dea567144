"""Reading Redis keys back into cachekit's layout: which namespace, which kind of key.

The layout itself belongs to :class:`cachekit.flow.keys.KeySpace`; every head used here is
asked of it (``space.value("")``, ``space.namespaced(ns, "")``), never spelled out again:

* values: ``<prefix>:{<logical key>}``, and beside each its rebuild lease ``...}:lease``;
* namespaces: ``<prefix>:<namespace>:{<name>}`` plus derived keys after the ``}``: lock
  fences, cart fill leases, Bloom filter bitmaps and counters, response-cache records.

What follows the closing brace names the kind of key (the table :data:`KINDS`).

Usage::

    space = KeySpace("shop")
    classify(space, "shop:{product:5}:lease")      # ('value', 'lease')
    logical_pattern(space, "product:")             # 'shop:{product:*'
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Final

from cachekit.flow.keys import KeySpace

__all__ = [
    "KINDS",
    "NAMESPACES",
    "bloom_name",
    "classify",
    "glob_escape",
    "logical_pattern",
    "raw_pattern",
]

# The namespaces the library writes (locks, tags, sessions, carts, Bloom filters, the
# response cache). A key under the prefix in none of them is reported as "other": it
# may belong to another cache whose prefix starts with ours ("shop" and "shop:v2").
NAMESPACES: Final = ("lock", "tag", "session", "cart", "bloom", "http")

# namespace -> (pattern of what follows "}", kind); the first match wins.
KINDS: Final[Mapping[str, Sequence[tuple[re.Pattern[str], str]]]] = {
    "value": [(re.compile(r""), "value"), (re.compile(r":lease"), "lease")],
    "lock": [(re.compile(r""), "lock"), (re.compile(r":fence"), "fence")],
    "tag": [(re.compile(r""), "version")],
    "session": [(re.compile(r""), "session")],
    "cart": [(re.compile(r""), "cart"), (re.compile(r":fill"), "fill lease")],
    "bloom": [
        (re.compile(r""), "descriptor"),
        (re.compile(r":generations"), "generation counter"),
        (re.compile(r":g\d+:\d+"), "bitmap part"),
        (re.compile(r":g\d+:count"), "item count"),
        (re.compile(r":g\d+:scratch"), "rebuild scratch"),
    ],
    "http": [
        (re.compile(r":g"), "path generation"),
        (re.compile(r":u[0-9a-f]+"), "url record"),
        (re.compile(r":v[0-9a-f]+"), "variant"),
    ],
}

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def glob_escape(text: str) -> str:
    """``text`` with Redis glob characters (``* ? [ ] \\``) escaped, to match literally.

    Usage::

        glob_escape("a*b")    # 'a\\\\*b'
    """
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def _value_head(space: KeySpace) -> str:
    return space.value("")[:-1]  # "<prefix>:{"


def _namespace_head(space: KeySpace, namespace: str) -> str:
    return space.namespaced(namespace, "")[:-1]  # "<prefix>:<namespace>:{"


def logical_pattern(space: KeySpace, prefix: str) -> str:
    """The SCAN pattern of every value whose logical key starts with ``prefix``.

    It ends inside the hash tag, so it also matches each value's derived keys (its lease);
    ``prefix`` is matched literally.

    Usage::

        logical_pattern(KeySpace("shop"), "a*")     # 'shop:{a\\\\**'
    """
    return glob_escape(_value_head(space) + prefix) + "*"


def raw_pattern(prefix: str) -> str:
    """The SCAN pattern of every Redis key that starts with ``prefix``, matched literally.

    Usage::

        raw_pattern("shop:session:")                # 'shop:session:*'
    """
    return glob_escape(prefix) + "*"


def classify(space: KeySpace, key: str) -> tuple[str, str]:
    """``(namespace, kind)`` of a Redis key found under ``space``'s prefix.

    ``("other", "other")`` for a key in none of cachekit's namespaces; ``(namespace,
    "other")`` for an unknown key inside one.

    Usage::

        classify(KeySpace("shop"), "shop:bloom:{products}:g3:0")   # ('bloom', 'bitmap part')
    """
    head = _value_head(space)
    namespace = "value" if key.startswith(head) else None
    if namespace is None:
        for candidate in NAMESPACES:
            head = _namespace_head(space, candidate)
            if key.startswith(head):
                namespace = candidate
                break
        else:
            return "other", "other"
    rest = key[len(head) :]
    close = rest.rfind("}")  # a name may hold "}" (raw keys are not escaped): the last one
    if close < 0:
        return namespace, "other"
    suffix = rest[close + 1 :]
    for pattern, kind in KINDS[namespace]:
        if pattern.fullmatch(suffix):
            return namespace, kind
    return namespace, "other"


def bloom_name(space: KeySpace, key: str) -> str | None:
    """The filter's name if ``key`` is a Bloom filter's descriptor, else ``None``.

    Usage::

        bloom_name(KeySpace("shop"), "shop:bloom:{products}")      # 'products'
    """
    head = _namespace_head(space, "bloom")
    if key.startswith(head) and key.endswith("}"):
        return key[len(head) : -1]
    return None
