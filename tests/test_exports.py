"""The public namespace: ``cachekit.__all__`` lists exactly what the package exports."""

from __future__ import annotations

import cachekit


def test_all_lists_every_public_name() -> None:
    public = {name for name in vars(cachekit) if not name.startswith("_")}
    modules = {name for name in public if type(vars(cachekit)[name]).__name__ == "module"}
    assert sorted(cachekit.__all__) == sorted((public - modules) | {"__version__"})


def test_the_contract_names_are_importable() -> None:
    from cachekit import (  # noqa: F401
        BackendUnavailable,
        Cache,
        CacheKitError,
        LockNotOwnedError,
        LockTimeout,
        NotConfigured,
    )

    assert issubclass(NotConfigured, CacheKitError)
    assert issubclass(BackendUnavailable, CacheKitError)
    assert issubclass(LockTimeout, CacheKitError)
    assert issubclass(LockNotOwnedError, CacheKitError)
    assert all(
        doc
        for doc in (
            getattr(cachekit, n).__doc__
            for n in cachekit.__all__[1:]
            if n != "__version__" and n != "MISSING"
        )
    )


def test_the_sessions_and_middleware_packages_export_their_contract_names() -> None:
    """The names DESIGN.md's contract imports from the two web packages exist and are listed."""
    import cachekit.middleware
    import cachekit.sessions

    for name in ("SessionMiddleware", "RedisSessionStore", "CartStore", "regenerate_session"):
        assert name in cachekit.sessions.__all__
        assert getattr(cachekit.sessions, name).__doc__
    assert "ResponseCacheMiddleware" in cachekit.middleware.__all__
    for package in (cachekit.sessions, cachekit.middleware):
        assert all(getattr(package, name).__doc__ for name in package.__all__)
