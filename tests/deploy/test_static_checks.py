"""The linters and schema validators of the deployment files, all offline.

Each tool is a pinned dev dependency (requirements.lock), so a missing one fails the test
instead of skipping it. Network access is cut for the validators (an unroutable proxy), so a
schema that would be fetched from the internet fails the test too. Each check also has a
broken file it must reject: a check that cannot fail proves nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.images import COMPOSE_FILES, DOCKERFILES, K8S_FILES

BIN = Path(sys.executable).parent
OFFLINE = {
    **os.environ,
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "",
    "no_proxy": "",
}
K8S_VERSION = "1.37.0"


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, env=OFFLINE, timeout=60
    )


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return run(BIN / "hadolint", "--no-color", path)


def compose_check(*paths: Path) -> subprocess.CompletedProcess[str]:
    return run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", *paths)


def k8s_check(*paths: Path) -> subprocess.CompletedProcess[str]:
    return run(BIN / "kubernetes-validate", "--strict", "-k", K8S_VERSION, *paths)


def test_the_deployment_files_are_all_there() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.hive", "Dockerfile.queen"]
    assert "compose.yaml" in [p.name for p in COMPOSE_FILES]
    assert {"queen.yaml", "hive.yaml", "secret.yaml"} <= {p.name for p in K8S_FILES}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    result = hadolint(dockerfile)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_rejects_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /tmp && pip install httpx\nENTRYPOINT queen-rbee\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3006" in result.stdout and "DL3025" in result.stdout


def test_compose_files_follow_the_compose_specification() -> None:
    result = compose_check(*COMPOSE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_check_rejects_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  queen:\n    image: rbee\n    enviroment:\n      A: b\n")
    result = compose_check(bad)
    assert result.returncode != 0 and "enviroment" in result.stdout, result.stdout + result.stderr


def test_kubernetes_manifests_follow_the_kubernetes_schemas() -> None:
    result = k8s_check(*K8S_FILES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout and "failed" not in result.stdout


def test_the_kubernetes_check_rejects_a_bad_manifest(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n"
        "spec:\n  ports:\n    - port: not-a-number\n  selectr: {}\n"
    )
    result = k8s_check(bad)
    assert result.returncode != 0, result.stdout + result.stderr
