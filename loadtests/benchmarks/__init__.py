"""The focused benchmarks, each ``python -m loadtests <name>`` and a ``make`` target.

``hitpath`` (``make bench``), ``near`` (``make bench-near``), ``cart`` (``make bench-cart``),
``http`` (``make bench-http``), ``outage`` (``make bench-outage``), ``herd``
(``make bench-herd``), ``penetration`` (``make bench-penetration``), ``consistency``
(``make bench-consistency``) and ``scaleout`` (``make bench-scaleout``): each a ``main(argv)``
on the shared harness (:mod:`loadtests.harness`), printing a table and writing its JSON.
"""
