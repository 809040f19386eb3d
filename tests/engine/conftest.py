"""Shared fixtures for the Ray-free engine tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def strict_device():
    """A CPU device whose namespace is array-api-strict (the stand-in for a GPU namespace)."""
    xps = pytest.importorskip("array_api_strict")
    from theme_engine.engine.device import Device

    return Device(kind="cpu", xp=xps)


@pytest.fixture
def clean_env(monkeypatch):
    """No THEME_ENGINE_* variables from the surrounding environment."""
    import os

    for key in list(os.environ):
        if key.startswith("THEME_ENGINE_"):
            monkeypatch.delenv(key)
    return monkeypatch

