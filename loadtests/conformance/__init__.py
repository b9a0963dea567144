"""The response cache on the public HTTP caching test suite (cache-tests.fyi).

``python loadtests/conformance/runner.py`` (or ``make conformance``); see ``runner.py``.
"""
