"""Reading predictions out of request and response JSON, and the privacy rules."""

from __future__ import annotations

import gzip

import pytest

from modeltel.capture import (
    CaptureError,
    CaptureSettings,
    FeatureFlattener,
    Prediction,
    extract_predictions,
)
from modeltel.instrumentation import _gunzip

DEFAULT = CaptureSettings()


def test_single_object():
    assert extract_predictions({"x": 1}, {"prediction": 2.0}, DEFAULT) == [Prediction({"x": 1}, 2.0)]


@pytest.mark.parametrize(
    ("request_json", "response_json"),
    [
        ([{"x": 1}, {"x": 2}], [{"prediction": 10}, {"prediction": 20}]),
        ([{"x": 1}, {"x": 2}], [10, 20]),
        ({"instances": [{"x": 1}, {"x": 2}]}, {"predictions": [10, 20]}),
        ({"inputs": [{"x": 1}, {"x": 2}]}, {"prediction": [10, 20]}),
    ],
)
def test_batch_shapes(request_json, response_json):
    predictions = extract_predictions(request_json, response_json, DEFAULT)
    assert [(p.features["x"], p.value) for p in predictions] == [(1, 10), (2, 20)]


def test_score_key():
    settings = CaptureSettings(prediction_key="label", score_key="proba")
    [prediction] = extract_predictions({"x": 1}, {"label": "spam", "proba": 0.9}, settings)
    assert (prediction.value, prediction.score) == ("spam", 0.9)


@pytest.mark.parametrize(
    ("request_json", "response_json", "message"),
    [
        ({"x": 1}, {"result": 1}, "has no 'prediction' field"),
        ([{"x": 1}, {"x": 2}], [1], "2 instances but the response 1 predictions"),
        ([{"x": 1}], {"result": 1}, "is not a list"),
        ("text", {"prediction": 1}, "JSON str, not an object"),
        ([1, 2], [1, 2], "a batch instance is a JSON int"),
        ({"x": 1}, {"prediction": [1, 2]}, "one instance but the response holds a list"),
    ],
)
def test_shapes_that_do_not_fit_name_the_problem(request_json, response_json, message):
    with pytest.raises(CaptureError, match=message):
        extract_predictions(request_json, response_json, DEFAULT)


def test_flatten_nested_lists_and_missing_values():
    flat = FeatureFlattener(DEFAULT).flatten({"a": {"b": 1, "c": None, "d": [1.5, {"e": "x"}]}, "f": True})
    assert flat == {"a.b": 1, "a.d.0": 1.5, "a.d.1.e": "x", "f": True}


def test_include_exclude_hash_and_truncate():
    settings = CaptureSettings(
        include={"a.b", "id", "text"},
        exclude={"secret"},
        hash_features={"id"},
        hash_salt="s",
        max_string_length=3,
    )
    flat = FeatureFlattener(settings).flatten(
        {"a": {"b": 1, "z": 2}, "secret": {"b": 1}, "id": "u-1", "text": "abcdef", "other": 1}
    )
    assert set(flat) == {"a.b", "id", "text"}
    assert flat["text"] == "abc"
    assert len(flat["id"]) == 16 and flat["id"] != "u-1"
    assert FeatureFlattener(settings).flatten({"id": "u-1"}) == {"id": flat["id"]}, "stable"


def test_max_features():
    flat = FeatureFlattener(CaptureSettings(max_features=3)).flatten({f"f{i}": i for i in range(10)})
    assert len(flat) == 3


def test_sampling_is_decided_by_the_id():
    settings = CaptureSettings(sample_rate=0.5)
    assert settings.sampled("0" * 24 + "00000000")
    assert not settings.sampled("0" * 24 + "ffffffff")
    assert CaptureSettings(sample_rate=1.0).sampled("f" * 32)
    assert not CaptureSettings(sample_rate=0.0).sampled("0" * 32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sample_rate": 1.5}, "sample_rate must be between 0 and 1"),
        ({"max_categories": 0}, "must be positive"),
        ({"task": "ranking"}, "task must be 'regression' or 'classification'"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CaptureSettings(**kwargs)


def test_gzip_bombs_are_refused():
    bomb = gzip.compress(b"0" * 10_000_000)
    with pytest.raises(CaptureError, match="inflates past max_body_bytes=1000000"):
        _gunzip(bomb, 1_000_000)
    assert _gunzip(gzip.compress(b'{"a": 1}'), 100) == b'{"a": 1}'
    with pytest.raises(CaptureError, match="not valid gzip"):
        _gunzip(b"plain", 100)
