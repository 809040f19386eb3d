"""The Python API: ``theme_engine.run`` on paths, a DataFrame, a Table and a Ray Dataset gives the
CLI's themes and duplicates; ``Result.load``; ``ThemeModel.assign`` and ``map_batches``."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

import theme_engine
from theme_engine import Result, ThemeModel
from theme_engine.cluster.commands.cli import main
from theme_engine.cluster.runtime.stages import ALWAYS_RUN

SETTINGS = {"k": 4, "seed": 3, "id_field": "id"}


def _frame(corpus: Path) -> pd.DataFrame:
    return pd.DataFrame([json.loads(line) for line in corpus.read_text().splitlines()])


def _outcome(documents: pd.DataFrame, duplicates: pd.DataFrame) -> tuple[list, set]:
    return list(zip(documents["id"], documents["theme"].astype("Int64").tolist())), set(zip(duplicates["id"], duplicates["duplicate_of"]))


@pytest.fixture(scope="module")
def cli_result(ray_session, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, Path]:
    root = tmp_path_factory.mktemp("cli")
    code = main(["run", str(corpus), "--out", str(root / "out"), "--cache-dir", str(root / "cache"), "--k", "4", "--seed", "3", "--id-field", "id"])
    assert code == 0
    return Result.load(root / "out"), root / "cache"


@pytest.mark.parametrize("kind", ["paths", "dataframe", "table", "dataset"])
def test_the_api_on_every_kind_of_data_gives_the_cli_result(cli_result, corpus: Path, tmp_path: Path, kind: str) -> None:
    import ray

    expected, cache = cli_result
    frame = _frame(corpus)
    data = {
        "paths": lambda: [corpus],
        "dataframe": lambda: frame,
        "table": lambda: pa.Table.from_pandas(frame, preserve_index=False),
        "dataset": lambda: ray.data.from_pandas(frame),
    }[kind]()
    got = theme_engine.run(data, out=tmp_path / "out", cache_dir=cache, **SETTINGS)
    assert _outcome(got.documents, got.duplicates) == _outcome(expected.documents, expected.duplicates)
    assert got.themes["label"].tolist() == expected.themes["label"].tolist()
    assert got.out == tmp_path / "out" and (tmp_path / "out" / "model.npz").is_file()
    again = theme_engine.run(data, out=tmp_path / "out", cache_dir=cache, **SETTINGS)
    assert all(s.get("reused") for name, s in again.manifest["stages"].items() if name not in ALWAYS_RUN), "a second call reuses every stage"


def test_without_out_the_run_is_in_memory_and_leaves_nothing(cli_result, corpus: Path, monkeypatch) -> None:
    import tempfile

    expected, cache = cli_result
    made: list[str] = []
    real = tempfile.mkdtemp

    def recording(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", recording)
    frame = _frame(corpus).drop(columns=["id"])
    got = theme_engine.run(frame, cache_dir=cache, k=4, seed=3)
    ours = [m for m in made if Path(m).name.startswith("theme-engine-")]
    assert got.out is None and len(ours) == 1
    assert Path(ours[0]).exists()  # the run's folder (its search index) lives as long as the Result
    assert got.documents["id"].tolist() == [str(i) for i in range(len(frame))], "in-memory rows are named by position"
    assert got.documents["theme"].tolist() == expected.documents["theme"].tolist()
    assert got.documents_dataset().count() == len(frame)
    del got
    gc.collect()
    assert not Path(ours[0]).exists(), "the temporary folder goes with the Result"


def test_assign_reproduces_the_themes_of_the_training_texts(cli_result, corpus: Path) -> None:
    expected, cache = cli_result
    frame = _frame(corpus).set_index("id")
    docs = expected.documents.set_index("id")
    model = expected.model
    model.cache_dir = cache
    got = model.assign(frame.loc[docs.index, "text"].tolist())
    agree = (got["theme"].to_numpy() == docs["theme"].to_numpy()).mean()
    assert agree >= 0.995, agree
    assert got["label"].tolist() == [model.labels[t] for t in got["theme"]]
    assert (got["distance"] - docs["distance"].to_numpy()).abs().max() < 1e-3


def test_theme_model_labels_a_ray_dataset_once_per_actor(cli_result, corpus: Path) -> None:
    import ray

    expected, cache = cli_result
    frame = _frame(corpus).head(60)
    ds = ray.data.from_pandas(frame).map_batches(
        ThemeModel, fn_constructor_kwargs={"path": str(expected.out), "cache_dir": str(cache)}, concurrency=1, batch_format="pandas", batch_size=20
    )
    got = ds.to_pandas().set_index("id")
    direct = ThemeModel.load(expected.out)
    direct.cache_dir = cache
    want = direct.assign(frame["text"].tolist()).set_index(frame["id"])
    assert got.loc[want.index, "theme"].tolist() == want["theme"].tolist()
    assert set(got.columns) >= {"text", "theme", "label", "distance"}


def test_bad_settings_and_data_are_named(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"unknown setting\(s\) kk; known: .*\bk\b"):
        theme_engine.run(["x.jsonl"], kk=3)
    with pytest.raises(TypeError, match="pandas DataFrame, a pyarrow Table or a ray.data.Dataset"):
        theme_engine.run({"text": ["a"]}, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_readme_example_runs(ray_session, monkeypatch) -> None:
    """The README's first Python API example, as written (on the bundled demo corpus)."""
    import re

    root = Path(__file__).resolve().parents[2]
    section = (root / "README.md").read_text().split("### Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(root)
    scope: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), scope)
    assert len(scope["result"].themes) >= 2 and len(scope["new"]) == 1
    assert scope["new"]["label"].iloc[0] in set(scope["result"].themes["label"])
    grown = scope["grown"]
    assert len(grown.documents) == len(scope["frame"]) and grown.documents.iloc[:1800]["theme"].equals(scope["result"].documents["theme"])
