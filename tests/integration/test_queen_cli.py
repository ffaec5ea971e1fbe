"""`queen-rbee` as a command: version, and settings that stop it at start with exit 1."""

from __future__ import annotations

import subprocess

import pytest

from tests.procs import VENV_BIN, free_port

pytestmark = pytest.mark.integration


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "queen-rbee"), *args], capture_output=True, text=True, timeout=60
    )


def test_version_and_help() -> None:
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("queen-rbee ")
    helped = run("--help")
    assert helped.returncode == 0
    for flag in (
        "--hive-stale-after-s",
        "--queue-size",
        "--default-deadline-s",
        "--max-workers-per-model",
        "--drain-timeout-s",
    ):
        assert flag in helped.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--port", "80"], "port"),
        (["--queue-size", "many"], "queue_size"),
        (["--host", "0.0.0.0", "--port", "0"], "port"),
    ],
)
def test_invalid_settings_exit_1_with_one_line(
    args: list[str], says: str, tmp_path: object
) -> None:
    result = run(*args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in result.stderr


def test_a_public_bind_without_credentials_is_refused(tmp_path: object) -> None:
    result = run("--host", "0.0.0.0", "--port", str(free_port()), "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert "API token required for non-loopback bind" in result.stderr
