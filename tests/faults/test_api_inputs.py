"""The Python API validates like the run: in-memory data whose text column holds non-strings or
whose ids are missing gives bad records naming the data row (never a raw Arrow error), and
``ThemeModel.assign`` refuses what it cannot place (not finite or zero vectors, a bare string, a
text that is not a string) instead of assigning it silently. Property tests (hypothesis)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from theme_engine.cluster.commands.api import ThemeModel, _pandas_table
from theme_engine.engine.corpus import STAGED_PROBLEM, InputFile, _parquet_records

PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
TEXT_VALUES = st.one_of(st.text(min_size=1, max_size=12), st.integers(), st.floats(), st.none(), st.booleans(), st.lists(st.integers(), max_size=2))
ID_VALUES = st.one_of(st.integers(-5, 10**6), st.floats(allow_infinity=False), st.none(), st.text(min_size=1, max_size=6))
FILE = InputFile(Path("input.parquet"), "parquet", "input.parquet")


@PROPERTY
@given(texts=st.lists(TEXT_VALUES, min_size=1, max_size=12), ids=st.data(), start=st.integers(0, 50))
def test_any_dataframe_stages_and_bad_rows_are_named(texts, ids, start) -> None:
    id_values = ids.draw(st.lists(ID_VALUES, min_size=len(texts), max_size=len(texts)))
    frame = pd.DataFrame({"text": pd.Series(texts, dtype=object), "id": pd.Series(id_values, dtype=object), "extra": range(len(texts))})
    table = _pandas_table(frame, "text", "id", start)  # never raises
    records = list(_parquet_records(FILE, table, "text", "id"))
    assert len(records) == len(texts)  # one record per row, in order
    for i, (rec, text, doc_id) in enumerate(zip(records, texts, id_values)):
        missing_id = doc_id is None or (isinstance(doc_id, float) and doc_id != doc_id)
        if not isinstance(text, str) and text is not None and not (isinstance(text, float) and text != text):
            assert rec["kind"] == "bad" and f"data row {start + i}" in rec["error"] and "not a string" in rec["error"]
        elif missing_id:
            assert rec["kind"] == "bad" and f"data row {start + i}" in rec["error"] and "missing" in rec["error"]
        elif isinstance(text, str) and isinstance(doc_id, str) and doc_id.strip() and "\\ud" not in text:
            assert rec["kind"] == "doc" and rec["text"] == text and rec["id"] == doc_id
        if rec["kind"] == "doc" and isinstance(doc_id, float):
            assert rec["id"] == (str(int(doc_id)) if doc_id.is_integer() else str(doc_id))  # 7.0 is "7"
    assert (STAGED_PROBLEM in table.column_names) == any(r["kind"] == "bad" and "data row" in r["error"] for r in records)


def test_a_clean_frame_stages_as_before() -> None:
    frame = pd.DataFrame({"text": ["a b c", "d e f"], "id": [3, 4]})
    table = _pandas_table(frame, "text", "id", 0)
    assert STAGED_PROBLEM not in table.column_names and table.column("id").to_pylist() == ["3", "4"]


@pytest.fixture(scope="module")
def model() -> ThemeModel:
    rng = np.random.default_rng(0)
    c = rng.normal(size=(4, 8)).astype(np.float32)
    return ThemeModel(c / np.linalg.norm(c, axis=1, keepdims=True), ["a", "b", "c", "d"], embed_model="not-loaded")


@PROPERTY
@given(v=hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=6).map(lambda s: (s[0], 8)),
                    elements=st.one_of(st.floats(-1e3, 1e3), st.sampled_from([0.0, np.nan, np.inf, -np.inf]))))  # fmt: skip
def test_assign_places_every_vector_or_names_the_ones_it_cannot(model: ThemeModel, v: np.ndarray) -> None:
    v32 = v.astype(np.float32)  # what assign computes in: a float64 too small for float32 is zero there
    bad = ~np.isfinite(v32).all(axis=1) | ~(np.linalg.norm(v32.astype(np.float64), axis=1) > 0)
    if bad.any():
        with pytest.raises(ValueError, match=rf"row\(s\) {int(np.flatnonzero(bad)[0])}\b.*not finite or are all zeros"):
            model.assign(vectors=v)
        return
    got = model.assign(vectors=v)
    assert len(got) == len(v) and got["theme"].between(0, 3).all() and np.isfinite(got["distance"]).all()
    assert (got["distance"] <= 2.0 + 1e-5).all()  # unit vectors: at most the diameter apart


def test_assign_refuses_a_bare_string_and_non_strings(model: ThemeModel) -> None:
    with pytest.raises(TypeError, match="not one string"):
        model.assign("Blessed are the meek")
    with pytest.raises(TypeError, match=r"texts\[1\] is a int"):
        model.assign(["fine", 5])
    with pytest.raises(ValueError, match="shape"):
        model.assign(vectors=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="numbers"):
        model.assign(vectors=[["x"] * 8])
