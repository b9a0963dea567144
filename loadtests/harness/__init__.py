"""The shared harness of ``python -m loadtests``: what every scenario and benchmark stands on.

* :mod:`~loadtests.harness.args` - the options every benchmark shares;
* :mod:`~loadtests.harness.servers` - ``REDIS_URL`` or a private server (the tests' launcher);
* :mod:`~loadtests.harness.tables` - the environment of a report, percentiles, tables;
* :mod:`~loadtests.harness.progress` - progress lines on stderr;
* :mod:`~loadtests.harness.fleet` - spawned worker processes (the multi-process benchmarks);
* :mod:`~loadtests.harness.openloop` - the open-loop request generator and its trace;
* :mod:`~loadtests.harness.outcome` - a scenario's arms, headline and verdict (the JSON);
* :mod:`~loadtests.harness.report` - ``REPORT.md``, ``SUMMARY.md`` and the charts;
* :mod:`~loadtests.harness.simdb`, :mod:`~loadtests.harness.library`,
  :mod:`~loadtests.harness.demo_runner`, :mod:`~loadtests.harness.demo_level` - the
  simulated database, the library-level and the demo-level arms of the scenarios.
"""

from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
"""``loadtests/results/``: where reports, charts and benchmark JSON go by default."""
