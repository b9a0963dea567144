"""cachekit's load tests: one entry point (``python -m loadtests``, see ``__main__``).

``harness/`` holds what every test shares (servers, arguments, tables, charts, progress,
the open-loop generator, the results JSON); ``scenarios/`` the suite's scenarios, each
protection on and off with a peer; ``benchmarks/`` the focused benchmarks run by the
``make bench*`` targets.
"""
