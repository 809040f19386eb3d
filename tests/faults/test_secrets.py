"""Credentials in a Qdrant URL or a Ray address never reach the log, the manifest, the metrics or
any file a run writes; a secret anywhere in a URL (password, a token as the user part, a query
parameter's value) is redacted."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from theme_engine.cluster.commands.cli import main
from theme_engine.engine.config import SECRET_PARAM, load_config, public_config, redact_url


def test_a_failing_run_with_a_password_in_the_qdrant_url_leaks_it_nowhere(ray_session, corpus: Path, tmp_path: Path, caplog, capsys) -> None:
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):
        code = main(["run", str(corpus), "--out", str(out), "--k", "3", "--qdrant-url", "http://me:hunter2@127.0.0.1:9"])
    assert code == 1
    assert "me:***@127.0.0.1:9" in caplog.text
    streams = capsys.readouterr()
    assert "hunter2" not in caplog.text + streams.out + streams.err
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "metrics.prom" for p in written)
    for path in written:
        assert b"hunter2" not in path.read_bytes(), f"{path} holds the password"


def test_the_manifest_config_hides_credentials_of_qdrant_and_ray() -> None:
    cfg = load_config({"cache": {"qdrant_url": "http://me:hunter2@10.0.0.2:6333"}, "ray": {"address": "ray://me:hunter2@10.0.0.1:10001"}})
    data = json.dumps(public_config(cfg))
    assert "hunter2" not in data
    assert "ray://me:***@10.0.0.1:10001" in data and "http://me:***@10.0.0.2:6333" in data


SECRET = "hunter2Zq9"  # never a substring of what a URL's other parts draw
PARAMS = st.sampled_from(["api_key", "apikey", "token", "access_token", "X-Amz-Signature", "X-Amz-Credential", "password", "auth", "sig", "secret"])
PLAIN = st.text(alphabet="abcdefghjkmnprstuvwxyz0134", min_size=1, max_size=8)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    scheme=st.sampled_from(["http", "https", "ray", "s3", "gs"]),
    host=st.sampled_from(["127.0.0.1", "qdrant.example", "[::1]", "head-0"]),
    port=st.none() | st.integers(1, 65535),
    where=st.sampled_from(["password", "user", "query"]),
    user=PLAIN,
    param=PARAMS,
    others=st.lists(st.tuples(PLAIN, PLAIN), max_size=3),
    path=st.sampled_from(["", "/", "/collections/x", "/bucket/key.parquet"]),
)
def test_a_secret_anywhere_in_a_url_is_redacted(scheme, host, port, where, user, param, others, path) -> None:
    netloc = host + (f":{port}" if port else "")
    query = "&".join(f"{k}={v}" for k, v in others)
    if where == "password":
        netloc = f"{user}:{SECRET}@{netloc}"
    elif where == "user":
        netloc = f"{SECRET}@{netloc}"
    else:
        query = "&".join(filter(None, [query, f"{param}={SECRET}"]))
    url = f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")
    red = redact_url(url)
    assert SECRET not in red and "***" in red
    assert host in red and (port is None or f":{port}" in red) and red.startswith(f"{scheme}://")  # still says where
    for k, v in others:
        if not SECRET_PARAM.search(k):
            assert f"{k}={v}" in red  # what is not secret stays readable


def test_an_unparseable_url_keeps_nothing_but_its_scheme() -> None:
    assert redact_url(f"http://me:{SECRET}@[::1") == "http://***"
    assert redact_url("http://127.0.0.1:6333") == "http://127.0.0.1:6333" and redact_url("auto") == "auto"
