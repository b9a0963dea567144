"""The layers of ARCHITECTURE.md, checked: every import inside cachekit points down or sideways.

Each module belongs to one layer; a module may import its own layer and those below it,
never one above. Imports under ``if TYPE_CHECKING:`` count too: a type that names a
higher layer is a dependency all the same. Integrations (the response cache, sessions,
contrib, the CLI) are the top: nothing in the core imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import cachekit

PACKAGE = Path(cachekit.__file__).parent

# Lowest first. A module is placed by the longest prefix of its dotted name listed here.
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "cachekit.exceptions",
        "cachekit.clock",
        "cachekit.config",
        "cachekit.stats",
        "cachekit.serializers",
    ),
    ("cachekit.backends",),
    ("cachekit.flow", "cachekit.bloom.state", "cachekit.bloom.flow"),
    ("cachekit.drivers", "cachekit.near"),
    (
        "cachekit",  # the faces: Cache, SyncCache, decorators, lock, Bloom, testing
        "cachekit.bloom.filter",
    ),
    ("cachekit.middleware", "cachekit.sessions", "cachekit.contrib", "cachekit.cli"),
)


def layer_of(module: str) -> int:
    """The index in LAYERS of ``module``'s longest matching prefix."""
    best, best_len = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best >= 0, module
    return best


def imports() -> list[tuple[str, str, int]]:
    """(importing module, imported module, line) for every cachekit import in the package."""
    found: list[tuple[str, str, int]] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [(module, n, node.lineno) for n in names if n.split(".")[0] == "cachekit"]
    return found


def test_every_import_points_down_or_sideways() -> None:
    upward = [
        f"{module}:{line} imports {target} (layer {layer_of(target)} > {layer_of(module)})"
        for module, target, line in imports()
        if layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_no_relative_imports() -> None:
    """Absolute imports only, so a module's dependencies read the same wherever it moves."""
    relative = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    assert relative == []


def test_the_layer_table_places_known_modules() -> None:
    assert layer_of("cachekit.flow.read") < layer_of("cachekit.drivers.drive")
    assert layer_of("cachekit.backends.ops.leases") < layer_of("cachekit.flow.read")
    assert layer_of("cachekit.cache") < layer_of("cachekit.middleware.flow")
    assert layer_of("cachekit.bloom.filter") == layer_of("cachekit.cache")
