"""Fixtures shared by every test: the tiny model, isolated data dirs, real processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Processes
from tests.tinymodel import tiny_model_path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real GGUF that llama.cpp loads in milliseconds; written once per session."""
    return tiny_model_path(tmp_path_factory.mktemp("models"))


@pytest.fixture
def rbee_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty RBEE_HOME, so no test touches ~/.rbee."""
    home = tmp_path / "rbee-home"
    home.mkdir()
    monkeypatch.setenv("RBEE_HOME", str(home))
    return home


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Start real commands; every one is killed (with its process group) at teardown."""
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.cleanup()
