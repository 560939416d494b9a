"""Coverage-guided fuzz targets (atheris, libFuzzer) for every decoder and extractor (issue 5).

One module per target; each is a standalone atheris program that instruments the collector's
code as it imports it::

    python -m fuzz extract -runs=20000              # seed a corpus, fuzz, count the cases
    python -m fuzz all -max_total_time=300
    python -m fuzz.extract crash-1234abcd           # replay one input (a reproducer)

Targets: ``extract`` (protobuf logs extraction), ``otlp-json`` (OTLP/JSON decoding), ``http``
(the OTLP/HTTP and ``/v1/labels`` receivers in-process, gzip and deflate included), ``labels``
(the ``/v1/labels`` body parser) and ``config`` (the configuration loader).

This package imports none of the code under test: a target must be the first to import it,
inside :func:`fuzz._harness.instrument`, or libFuzzer gets no coverage from it.
"""

from __future__ import annotations

TARGETS: dict[str, str] = {
    "extract": "fuzz.extract",
    "otlp-json": "fuzz.otlp_json",
    "http": "fuzz.http_body",
    "labels": "fuzz.labels",
    "config": "fuzz.config",
}
"""Target name: the module that runs it."""

INSTRUMENTED = ["modeltel_collector", "modeltel"]
"""Packages whose bytecode is instrumented for coverage (the code under test)."""
