from pathlib import Path

import pytest

from llm_worker.settings import WorkerSettings
from shared.settings import ConfigError, settings_from_argv


def test_flags_beat_environment_beat_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "worker.toml"
    config.write_text('port = 9001\nslots = 3\nworker_id = "from-file"\n')
    monkeypatch.setenv("RBEE_WORKER_PORT", "9002")
    monkeypatch.setenv("RBEE_WORKER_SLOTS", "2")
    settings, _ = settings_from_argv(
        WorkerSettings,
        ["--model", "/m.gguf", "--config", str(config), "--port", "9003"],
        "w",
        "",
    )
    assert settings is not None
    assert (settings.port, settings.slots, settings.worker_id) == (9003, 2, "from-file")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--port", "80"], "invalid setting port"),
        (["--backend", "tpu"], "invalid setting backend"),
        (["--slots", "0"], "invalid setting slots"),
    ],
)
def test_invalid_settings_name_the_setting(argv: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        settings_from_argv(WorkerSettings, ["--model", "/m.gguf", *argv], "w", "")


def test_unknown_prefixed_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RBEE_WORKER_SOMETHING_ELSE", "1")
    assert WorkerSettings.load(model="/m.gguf").port == 8001
