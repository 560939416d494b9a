"""Extraction of OTLP logs requests into columnar prediction and label batches."""

from __future__ import annotations

import math
from time import time_ns
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.sdk.resources import Resource as SdkResource

from modeltel import semconv
from modeltel._otlp import LogsRequestFramer, encode_event
from modeltel_collector import extract as extract_module
from modeltel_collector.batch import LabelBatch, PredictionBatch
from modeltel_collector.extract import Extraction, extract_logs
from modeltel_collector.otlp_values import attributes as decode_attributes
from modeltel_collector.receivers.consumer import ExportOutcome

NOW = 1_800_000_000_000_000_000
T0 = 1_700_000_000_000_000_000
F = semconv.FEATURE_PREFIX


class Empty:
    """An ``AnyValue`` with nothing set."""


def any_value(value: Any) -> AnyValue:
    if isinstance(value, Empty):
        return AnyValue()
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(item) for item in value]))
    if isinstance(value, dict):
        return AnyValue(kvlist_value=KeyValueList(values=keyvalues(value)))
    raise TypeError(type(value))


def keyvalues(attrs: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=key, value=any_value(value)) for key, value in attrs.items()]


def log_record(
    attrs: dict[str, Any],
    event: str = semconv.PREDICTION_EVENT,
    time: int | None = None,
    observed: int = 0,
    body: str = "",
) -> LogRecord:
    record = LogRecord(
        event_name=event,
        time_unix_nano=T0 if time is None else time,
        observed_time_unix_nano=observed,
        attributes=keyvalues(attrs),
    )
    if body:
        record.body.string_value = body
    return record


def request(*records: LogRecord, split: int | None = None) -> ExportLogsServiceRequest:
    """One request; ``split`` puts the records from that index on under a second resource."""
    groups = [list(records)] if split is None else [list(records[:split]), list(records[split:])]
    return ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=Resource(attributes=keyvalues({"service.name": f"svc{i}"})),
                scope_logs=[ScopeLogs(scope=InstrumentationScope(name="modeltel"), log_records=group)],
            )
            for i, group in enumerate(groups)
        ]
    )


def prediction(
    pid: str, features: dict[str, Any], model: str = "salary", version: str = "v1", **extra: Any
) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        semconv.MODEL_NAME: model,
        semconv.MODEL_VERSION: version,
        semconv.PREDICTION_ID: pid,
    }
    attrs.update({F + name: value for name, value in features.items()})
    attrs.update(extra)
    return attrs


def label(pid: str, value: Any, model: str = "salary") -> dict[str, Any]:
    return {semconv.MODEL_NAME: model, semconv.PREDICTION_ID: pid, semconv.LABEL_VALUE: value}


def extract(*records: LogRecord) -> Extraction:
    return extract_logs(request(*records).SerializeToString(), now_unix_nano=NOW)


def only_batch(extraction: Extraction) -> PredictionBatch:
    assert len(extraction.predictions) == 1
    return extraction.predictions[0]


def assert_floats(column: np.ndarray, expected: list[float]) -> None:
    assert column.dtype == np.float64
    np.testing.assert_array_equal(column, np.array(expected, dtype=np.float64))


def assert_objects(column: np.ndarray | None, expected: list[Any] | None) -> None:
    if expected is None:
        assert column is None
        return
    assert column is not None
    assert column.dtype == object
    assert column.tolist() == expected


# --------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------
def test_numeric_categorical_and_bool_features():
    extraction = extract(
        log_record(prediction("p1", {"age": 31, "income": 5200.5, "city": "Lyon", "remote": True})),
        log_record(prediction("p2", {"age": 45, "income": 0.0, "city": "Paris", "remote": False})),
    )
    batch = only_batch(extraction)
    assert (batch.model, batch.version, len(batch)) == ("salary", "v1", 2)
    assert sorted(batch.numeric) == ["age", "income"]
    assert sorted(batch.categorical) == ["city", "remote"]
    assert_floats(batch.numeric["age"], [31, 45])
    assert_floats(batch.numeric["income"], [5200.5, 0.0])
    assert_objects(batch.categorical["city"], ["Lyon", "Paris"])
    assert_objects(batch.categorical["remote"], ["true", "false"])
    assert_objects(batch.prediction_ids, ["p1", "p2"])
    assert batch.time_unix_nano.dtype == np.int64
    assert extraction.outcome == ExportOutcome()
    assert (extraction.rejected, extraction.error_message) == (0, "")


def test_zero_nan_and_extreme_numbers():
    extraction = extract(
        log_record(prediction("p1", {"x": 0.0, "n": 0, "big": 2**63 - 1, "neg": -(2**63)})),
        log_record(prediction("p2", {"x": math.nan, "n": -0.0, "big": math.inf, "neg": -1.5})),
    )
    batch = only_batch(extraction)
    assert_floats(batch.numeric["x"], [0.0, math.nan])
    assert_floats(batch.numeric["n"], [0.0, -0.0])
    assert_floats(batch.numeric["big"], [float(2**63 - 1), math.inf])
    assert_floats(batch.numeric["neg"], [float(-(2**63)), -1.5])
    assert batch.categorical == {}


def test_features_missing_in_some_rows_are_nan_or_none():
    extraction = extract(
        log_record(prediction("p1", {"age": 30.0, "city": "Lyon"})),
        log_record(prediction("p2", {})),
        log_record(prediction("p3", {"age": 50.0})),
        log_record(prediction("p4", {"city": "Nice", "late": 1.5})),
    )
    batch = only_batch(extraction)
    assert_floats(batch.numeric["age"], [30.0, math.nan, 50.0, math.nan])
    assert_floats(batch.numeric["late"], [math.nan, math.nan, math.nan, 1.5])
    assert_objects(batch.categorical["city"], ["Lyon", None, None, "Nice"])


def test_a_feature_whose_type_varies_is_in_both_column_kinds():
    extraction = extract(
        log_record(prediction("p1", {"zip": 69001})),
        log_record(prediction("p2", {"zip": "2A004"})),
        log_record(prediction("p3", {"zip": 75001.0})),
        log_record(prediction("p4", {"zip": True})),
        log_record(prediction("p5", {"level": "senior"})),
        log_record(prediction("p6", {"level": 3})),
    )
    batch = only_batch(extraction)
    assert_floats(batch.numeric["zip"], [69001, math.nan, 75001.0, math.nan, math.nan, math.nan])
    assert_objects(batch.categorical["zip"], [None, "2A004", None, "true", None, None])
    assert_floats(batch.numeric["level"], [math.nan] * 5 + [3])
    assert_objects(batch.categorical["level"], [None] * 4 + ["senior", None])


def test_a_feature_of_an_unusable_type_is_missing_without_rejecting_the_record():
    extraction = extract(
        log_record(prediction("p1", {"tags": ["a", "b"], "blob": b"\x00", "nested": {"a": 1}, "x": 1.0})),
        log_record(prediction("p2", {"tags": "a", "blob": 2.0, "nested": Empty(), "x": 2.0})),
    )
    batch = only_batch(extraction)
    assert extraction.rejected == 0
    assert_objects(batch.categorical["tags"], [None, "a"])
    assert_floats(batch.numeric["blob"], [math.nan, 2.0])
    assert "nested" not in batch.numeric and "nested" not in batch.categorical
    assert_floats(batch.numeric["x"], [1.0, 2.0])


def test_nested_feature_names_and_other_attributes():
    extraction = extract(
        log_record(
            prediction(
                "p1",
                {"address.city": "Lyon", "items.0": 2.0},
                **{semconv.MODEL_TASK: "regression", "http.route": "/predict", F: 1.0},
            )
        )
    )
    batch = only_batch(extraction)
    assert sorted(batch.numeric) == ["items.0"]  # the bare prefix names no feature
    assert sorted(batch.categorical) == ["address.city"]


# --------------------------------------------------------------------------------------
# Predictions, scores, groups
# --------------------------------------------------------------------------------------
def test_prediction_values_and_scores():
    extraction = extract(
        log_record(prediction("p1", {}, **{semconv.PREDICTION_VALUE: 51000.5})),
        log_record(prediction("p2", {}, **{semconv.PREDICTION_VALUE: 7, semconv.PREDICTION_SCORE: 0.25})),
        log_record(prediction("p3", {}, **{semconv.PREDICTION_SCORE: 1})),
        log_record(prediction("p4", {}, **{semconv.PREDICTION_VALUE: [1.0], semconv.PREDICTION_SCORE: "hi"})),
    )
    batch = only_batch(extraction)
    assert_floats(batch.prediction, [51000.5, 7, math.nan, math.nan])
    assert batch.prediction_class is None
    assert_floats(batch.score, [math.nan, 0.25, 1.0, math.nan])
    assert extraction.rejected == 0


def test_classifier_predictions_are_strings_and_numbers_get_a_class_text():
    extraction = extract(
        log_record(prediction("p1", {}, **{semconv.PREDICTION_VALUE: "cat"})),
        log_record(prediction("p2", {}, **{semconv.PREDICTION_VALUE: True})),
        log_record(prediction("p3", {}, **{semconv.PREDICTION_VALUE: 1.0})),
        log_record(prediction("p4", {}, **{semconv.PREDICTION_VALUE: 2.5})),
        log_record(prediction("p5", {}, **{semconv.PREDICTION_VALUE: 3})),
        log_record(prediction("p6", {})),
    )
    batch = only_batch(extraction)
    assert_floats(batch.prediction, [math.nan, math.nan, 1.0, 2.5, 3.0, math.nan])
    assert_objects(batch.prediction_class, ["cat", "true", "1", "2.5", "3", None])


def test_several_models_and_versions_make_separate_batches():
    extraction = extract_logs(
        request(
            log_record(prediction("a1", {"x": 1.0}, model="salary", version="v1")),
            log_record(prediction("b1", {"y": "u"}, model="churn", version="2024.1")),
            log_record(prediction("a2", {"x": 2.0}, model="salary", version="v2")),
            log_record(prediction("a3", {"x": 3.0, "z": 9.0}, model="salary", version="v1")),
            log_record(prediction("b2", {"y": "w"}, model="churn", version="2024.1")),
            split=2,  # across two resources: batches are per model and version, not per resource
        ).SerializeToString(),
        now_unix_nano=NOW,
    )
    batches = {(batch.model, batch.version): batch for batch in extraction.predictions}
    assert list(batches) == [("salary", "v1"), ("churn", "2024.1"), ("salary", "v2")]
    salary_v1 = batches["salary", "v1"]
    assert_objects(salary_v1.prediction_ids, ["a1", "a3"])
    assert_floats(salary_v1.numeric["x"], [1.0, 3.0])
    assert_floats(salary_v1.numeric["z"], [math.nan, 9.0])
    assert salary_v1.categorical == {}
    churn = batches["churn", "2024.1"]
    assert_objects(churn.prediction_ids, ["b1", "b2"])
    assert churn.numeric == {}
    assert_objects(churn.categorical["y"], ["u", "w"])
    assert_floats(batches["salary", "v2"].numeric["x"], [2.0])
    assert batches["salary", "v2"].categorical == {}
    assert extraction.prediction_count == 5


# --------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------
def test_labels_are_batched_per_model():
    extraction = extract(
        log_record(label("p1", 52000.0), event=semconv.LABEL_EVENT, time=T0 + 1),
        log_record(label("c1", "churned", model="churn"), event=semconv.LABEL_EVENT, time=T0 + 2),
        log_record(label("p2", 48000), event=semconv.LABEL_EVENT, time=T0 + 3),
        log_record(label("c2", False, model="churn"), event=semconv.LABEL_EVENT, time=T0 + 4),
        log_record(label("c3", 1, model="churn"), event=semconv.LABEL_EVENT, time=T0 + 5),
    )
    assert extraction.predictions == []
    batches = {batch.model: batch for batch in extraction.labels}
    assert list(batches) == ["salary", "churn"]
    salary = batches["salary"]
    assert isinstance(salary, LabelBatch)
    assert_objects(salary.prediction_ids, ["p1", "p2"])
    assert_floats(salary.value, [52000.0, 48000.0])
    assert salary.value_class is None
    assert salary.time_unix_nano.tolist() == [T0 + 1, T0 + 3]
    churn = batches["churn"]
    assert_objects(churn.prediction_ids, ["c1", "c2", "c3"])
    assert_floats(churn.value, [math.nan, math.nan, 1.0])
    assert_objects(churn.value_class, ["churned", "false", "1"])
    assert extraction.label_count == 5


def test_predictions_and_labels_in_one_request():
    extraction = extract(
        log_record(prediction("p1", {"x": 1.0}, **{semconv.PREDICTION_VALUE: 10.0})),
        log_record(label("p1", 11.0), event=semconv.LABEL_EVENT),
    )
    assert only_batch(extraction).prediction.tolist() == [10.0]
    assert [batch.value.tolist() for batch in extraction.labels] == [[11.0]]


# --------------------------------------------------------------------------------------
# Rejections
# --------------------------------------------------------------------------------------
def test_rejected_predictions_with_the_reason_per_attribute():
    good = prediction("ok", {"x": 1.0})
    no_model = {
        k: v for k, v in prediction("n1", {"x": 2.0, "only_here": 5.0}).items() if k != semconv.MODEL_NAME
    }
    extraction = extract(
        log_record(no_model),
        log_record(good),
        log_record({**no_model, semconv.PREDICTION_ID: "n2"}),
        log_record({**good, semconv.MODEL_VERSION: 3}),
    )
    assert extraction.rejected == 3
    assert extraction.error_message == (
        "3 ml.prediction records rejected: missing ml.model.name (2), "
        "ml.model.version is an int, not a string (1)"
    )
    assert extraction.outcome == ExportOutcome(3, extraction.error_message)
    batch = only_batch(extraction)
    assert_objects(batch.prediction_ids, ["ok"])
    assert_floats(batch.numeric["x"], [1.0])
    assert "only_here" not in batch.numeric  # only in rejected records
    assert_floats(batch.prediction, [math.nan])
    assert batch.time_unix_nano.tolist() == [T0]


def test_rejected_labels_and_every_kind_of_problem():
    base = prediction("p", {})
    extraction = extract(
        log_record({k: v for k, v in base.items() if k != semconv.PREDICTION_ID}),
        log_record({**base, semconv.MODEL_NAME: ""}),
        log_record({**base, semconv.PREDICTION_ID: 12.5}),
        log_record({**base, semconv.MODEL_VERSION: Empty()}),
        log_record({**base, semconv.MODEL_NAME: ["salary"]}),
        log_record(
            {k: v for k, v in label("p", 1.0).items() if k != semconv.LABEL_VALUE}, semconv.LABEL_EVENT
        ),
        log_record(label("p", b"\x01"), semconv.LABEL_EVENT),
        log_record(label("p", 1.0, model=""), semconv.LABEL_EVENT),
    )
    assert extraction.predictions == [] and extraction.labels == []
    assert extraction.rejected == 8
    assert extraction.error_message == (
        "5 ml.prediction records rejected: missing ml.prediction.id (1), ml.model.name is empty (1), "
        "ml.prediction.id is a float, not a string (1), 2 other reasons (2); "
        "3 ml.label records rejected: missing ml.label.value (1), "
        "ml.label.value is bytes, not a number, string or bool (1), ml.model.name is empty (1)"
    )


def test_one_rejected_record_is_singular():
    extraction = extract(log_record({semconv.PREDICTION_ID: "p"}))
    assert extraction.error_message == "1 ml.prediction record rejected: missing ml.model.name (1)"


# --------------------------------------------------------------------------------------
# What is not an ml event; event name and time fallbacks
# --------------------------------------------------------------------------------------
def test_ordinary_logs_and_other_events_are_neither_extracted_nor_rejected():
    extraction = extract(
        log_record({"http.route": "/predict"}, event="", body="GET /predict 200"),
        log_record({}, event="", body="no attributes"),
        log_record({semconv.MODEL_NAME: "salary"}, event="browser.page_view"),
        log_record({"event.name": "other.event", semconv.MODEL_NAME: "x"}, event=""),
        log_record(prediction("p1", {"x": 1.0})),
    )
    assert extraction.rejected == 0 and extraction.error_message == ""
    assert_objects(only_batch(extraction).prediction_ids, ["p1"])
    assert extraction.labels == []


def test_event_name_attribute_of_older_senders():
    extraction = extract(
        log_record({"event.name": semconv.PREDICTION_EVENT, **prediction("p1", {"x": 1.0})}, event=""),
        log_record({**label("p1", 2.0), "event.name": semconv.LABEL_EVENT}, event=""),
        # event_name wins over the attribute
        log_record({"event.name": semconv.LABEL_EVENT, **prediction("p2", {"x": 3.0})}),
    )
    batch = only_batch(extraction)
    assert_objects(batch.prediction_ids, ["p1", "p2"])
    assert_floats(batch.numeric["x"], [1.0, 3.0])
    assert [batch.prediction_ids.tolist() for batch in extraction.labels] == [["p1"]]


def test_time_falls_back_to_observed_time_then_receive_time():
    extraction = extract(
        log_record(prediction("p1", {}), time=T0, observed=T0 + 5),
        log_record(prediction("p2", {}), time=0, observed=T0 + 7),
        log_record(prediction("p3", {}), time=0, observed=0),
        log_record(label("p3", 1.0), event=semconv.LABEL_EVENT, time=0, observed=0),
        log_record(prediction("p4", {}), time=2**64 - 1),
    )
    batch = only_batch(extraction)
    assert batch.time_unix_nano.tolist() == [T0, T0 + 7, NOW, 2**63 - 1]
    assert extraction.labels[0].time_unix_nano.tolist() == [NOW]


def test_receive_time_defaults_to_now():
    extraction = extract_logs(request(log_record(prediction("p1", {}), time=0)).SerializeToString())
    assert abs(int(only_batch(extraction).time_unix_nano[0]) - time_ns()) < 60 * 10**9


def test_an_empty_request():
    assert extract_logs(b"") == Extraction([], [], 0, "")
    empty_scopes = ExportLogsServiceRequest(resource_logs=[ResourceLogs(scope_logs=[ScopeLogs()])])
    assert extract_logs(empty_scopes.SerializeToString()) == Extraction()


def test_too_many_sparse_features_are_left_out_and_said_so(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(extract_module, "MAX_CELLS", 10)
    extraction = extract(
        *(log_record(prediction(f"p{i}", {"common": float(i), f"rare{i}": 1.0})) for i in range(4))
    )
    batch = only_batch(extraction)
    assert_floats(batch.numeric["common"], [0.0, 1.0, 2.0, 3.0])  # most frequent first: kept
    assert len(batch.numeric) == 2  # then one 4-row column of the rare ones fits in 10 cells
    assert extraction.rejected == 0
    assert extraction.error_message == (
        "3 ml.feature.* values left out: too many distinct features in one request"
    )


# --------------------------------------------------------------------------------------
# The SDK's own encoder and the collector agree
# --------------------------------------------------------------------------------------
def test_events_encoded_by_the_sdk_extract_like_proto_built_ones():
    rows = [
        prediction(
            f"id-{i}",
            {"age": 20 + i, "income": 1000.0 * i, "city": ["Lyon", "Paris"][i % 2], "remote": i % 3 == 0},
            version="v1" if i < 3 else "v2",
            **{semconv.MODEL_TASK: "regression", semconv.PREDICTION_VALUE: 10.0 + i},
        )
        for i in range(5)
    ]
    rows[2].pop(F + "city")
    labels = [label("id-1", 12.5), label("id-4", 13.0)]
    framer = LogsRequestFramer(SdkResource.create({"service.name": "salary-api"}), semconv.SCOPE_NAME, "0.1")
    payload = framer.frame(
        [
            encode_event(
                time_unix_nano=T0 + i, event_name=semconv.PREDICTION_EVENT, attributes=attrs, trace_id=7
            )
            for i, attrs in enumerate(rows)
        ]
        + [
            encode_event(time_unix_nano=T0 + 10 + i, event_name=semconv.LABEL_EVENT, attributes=attrs)
            for i, attrs in enumerate(labels)
        ]
    )
    from_sdk = extract_logs(payload, now_unix_nano=NOW)
    from_proto = extract(
        *(log_record(attrs, time=T0 + i) for i, attrs in enumerate(rows)),
        *(log_record(attrs, semconv.LABEL_EVENT, time=T0 + 10 + i) for i, attrs in enumerate(labels)),
    )
    assert_extractions_equal(from_sdk, from_proto)
    v1 = from_sdk.predictions[0]
    assert (v1.version, len(v1), len(from_sdk.predictions[1])) == ("v1", 3, 2)
    assert_objects(v1.categorical["city"], ["Lyon", "Paris", None])
    assert_objects(v1.categorical["remote"], ["true", "false", "false"])
    assert_floats(v1.numeric["age"], [20, 21, 22])
    assert_floats(from_sdk.labels[0].value, [12.5, 13.0])


# --------------------------------------------------------------------------------------
# Against a plain, obviously correct implementation
# --------------------------------------------------------------------------------------
def assert_columns_equal(left: np.ndarray | None, right: np.ndarray | None) -> None:
    if left is None or right is None:
        assert left is None and right is None
        return
    assert left.dtype == right.dtype
    if left.dtype == object:
        assert left.tolist() == right.tolist()
    else:
        np.testing.assert_array_equal(left, right)


def assert_extractions_equal(left: Extraction, right: Extraction) -> None:
    assert (left.rejected, left.error_message) == (right.rejected, right.error_message)
    assert len(left.predictions) == len(right.predictions)
    for a, b in zip(left.predictions, right.predictions, strict=True):
        assert (a.model, a.version) == (b.model, b.version)
        for name in ("time_unix_nano", "prediction_ids", "prediction", "prediction_class", "score"):
            assert_columns_equal(getattr(a, name), getattr(b, name))
        for kind in ("numeric", "categorical"):
            assert sorted(getattr(a, kind)) == sorted(getattr(b, kind))
            for feature, column in getattr(a, kind).items():
                assert_columns_equal(column, getattr(b, kind)[feature])
    assert len(left.labels) == len(right.labels)
    for c, d in zip(left.labels, right.labels, strict=True):
        assert c.model == d.model
        for name in ("time_unix_nano", "prediction_ids", "value", "value_class"):
            assert_columns_equal(getattr(c, name), getattr(d, name))


def reference_predictions(records: list[LogRecord]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (model, version): rows of plain Python values, decoded attribute by attribute."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        attrs = decode_attributes(record.attributes)
        model, version, pid = (
            attrs.get(k) for k in (semconv.MODEL_NAME, semconv.MODEL_VERSION, semconv.PREDICTION_ID)
        )
        if not all(isinstance(v, str) and v for v in (model, version, pid)):
            continue
        group = out.setdefault((model, version), {"ids": [], "rows": []})
        group["ids"].append(pid)
        group["rows"].append(
            {k[len(F) :]: v for k, v in attrs.items() if k.startswith(F) and len(k) > len(F)}
        )
    return out


feature_values = st.one_of(
    st.floats(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 0.0, -0.0, "", "a", "b", True, False]),
    st.text(max_size=3),
    st.just([1, 2]),
)
records_strategy = st.lists(
    st.tuples(
        st.sampled_from(["m1", "m2", None, 5]),
        st.sampled_from(["v1", "v2", None, ""]),
        st.one_of(st.none(), st.text(min_size=1, max_size=4)),
        st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), feature_values, max_size=4),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(records_strategy)
def test_matches_a_reference_implementation(specs):
    records = []
    for model, version, pid, features in specs:
        attrs: dict[str, Any] = {}
        if model is not None:
            attrs[semconv.MODEL_NAME] = model
        if version is not None:
            attrs[semconv.MODEL_VERSION] = version
        if pid is not None:
            attrs[semconv.PREDICTION_ID] = pid
        attrs.update({F + name: value for name, value in features.items()})
        records.append(log_record(attrs))
    extraction = extract(*records)
    expected = reference_predictions(records)
    assert extraction.rejected == len(records) - sum(len(g["ids"]) for g in expected.values())
    assert [(b.model, b.version) for b in extraction.predictions] == list(expected)
    for batch in extraction.predictions:
        group = expected[batch.model, batch.version]
        assert batch.prediction_ids.tolist() == group["ids"]
        names = {name for row in group["rows"] for name in row}
        for name in names:
            values = [row.get(name) for row in group["rows"]]
            numbers = [float(v) if type(v) in (int, float) else math.nan for v in values]
            texts = [
                v if type(v) is str else ("true" if v else "false") if type(v) is bool else None
                for v in values
            ]
            if any(type(v) in (int, float) for v in values):
                np.testing.assert_array_equal(batch.numeric[name], np.array(numbers))
            else:
                assert name not in batch.numeric
            if any(type(v) in (str, bool) for v in values):
                assert batch.categorical[name].tolist() == texts
            else:
                assert name not in batch.categorical
        assert set(batch.numeric) | set(batch.categorical) <= names
