"""Fuzz target: the configuration loader (:func:`~modeltel_collector.config.load_config` on a
file, and :func:`~modeltel_collector.config.parse_config` on a parsed document).

Input: first byte even, the rest is the file's bytes (seeded with the repository's own
configurations); odd, the rest drives a generator of documents shaped like a configuration
(the schema's own keys, values of every YAML type, some shared so that YAML writes anchors
and aliases), which is validated as it is and written as YAML and loaded.

Contract: a :class:`ConfigError` or a :class:`CollectorConfig`, nothing else; the error names
the file (``load_config``), or lists its problems one per line as ``where: why``
(``parse_config``), naming every unknown top-level key when all problems are listed; a
document is valid as it is exactly when it is once written to YAML.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import atheris
from pydantic import BaseModel

from fuzz import INSTRUMENTED
from fuzz._harness import instrument, main, structured
from fuzz._inputs import json_value, text

with instrument([*INSTRUMENTED, "yaml"], dataflow=True):  # no numpy; YAML's parser guides too
    import yaml

    from modeltel_collector.config import CollectorConfig, ConfigError, load_config, parse_config, shown_key

FILE = Path(tempfile.mkdtemp(prefix="modeltel-fuzz-config-")) / "collector.yaml"


def _types(annotation: Any) -> list[Any]:
    """An annotation and every type inside it (``X | None``, ``dict[str, X]``, ``tuple[X, ...]``)."""
    return [annotation, *(t for arg in getattr(annotation, "__args__", ()) for t in _types(arg))]


def _schema_keys(model: type[BaseModel], out: set[str]) -> set[str]:
    """Every field name of the configuration's sections, recursively."""
    for name, field in model.model_fields.items():
        out.add(name)
        for inner in _types(field.annotation):
            if isinstance(inner, type) and issubclass(inner, BaseModel) and inner is not model:
                _schema_keys(inner, out)
    return out


KEYS = sorted(_schema_keys(CollectorConfig, set()) | {"salary", "x", "otlp", "prometheus"})


def generated_document(fdp: Any) -> Any:
    """A configuration-shaped document; now and then a value shared many times (YAML aliases)."""
    document = {text(fdp, KEYS): json_value(fdp, KEYS) for _ in range(fdp.ConsumeIntInRange(0, 5))}
    if document and fdp.ConsumeIntInRange(0, 7) == 0:
        shared = json_value(fdp, KEYS)
        for _ in range(fdp.ConsumeIntInRange(1, 4)):  # at most 10**4 references: no bomb here
            shared = [shared] * fdp.ConsumeIntInRange(2, 10)
        document[fdp.PickValueInList(list(document))] = shared
    return document


def _load(data: bytes) -> CollectorConfig | None:
    FILE.write_bytes(data)
    try:
        config = load_config(FILE)
    except ConfigError as error:
        assert str(FILE) in str(error), f"the error does not name the file: {error}"
        return None
    assert isinstance(config, CollectorConfig)
    return config


def _parse(document: Any) -> CollectorConfig | None:
    try:
        config = parse_config(document)
    except ConfigError as error:
        message = str(error)
        assert message.startswith("invalid collector configuration:\n"), message
        lines = message.split("\n")[1:]  # one problem per line: keys with line breaks are quoted
        assert lines and all(line.startswith("  ") and ": " in line for line in lines), message
        if isinstance(document, dict) and " more problems" not in message:  # else the first 20 only
            unknown = [k for k in document if isinstance(k, str) and k not in CollectorConfig.model_fields]
            assert all(f"{shown_key(key)}: unknown key" in message for key in unknown), message
        return None
    assert isinstance(config, CollectorConfig)
    return config


def check(data: bytes) -> None:
    """One input through the loader (see the module docstring)."""
    is_structured, _, rest = structured(data)
    if not is_structured:
        _load(rest)
        return
    document = generated_document(atheris.FuzzedDataProvider(rest))
    parsed = _parse(document)
    loaded = _load(yaml.safe_dump(document, allow_unicode=bool(document) and len(document) % 2 == 0).encode())
    assert (parsed is None) == (loaded is None), "valid as a document, not once written as YAML, or back"


def test_one_input(data: bytes) -> None:
    """One fuzz case."""
    check(data)


if __name__ == "__main__":
    main(test_one_input)
