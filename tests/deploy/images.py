"""What the deployment files say, read the way Docker and compose read them.

The static tests check these facts against the code (no drift), and the multi-host test starts
the services with exactly the command and environment that the images and compose files give
them, so what the tests prove holds in the containers.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = ROOT / "deploy" / "k8s"
DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile.*") if p.suffix != ".dockerignore")
COMPOSE_FILES = sorted(DOCKER.glob("compose*.yaml"))
K8S_FILES = sorted(K8S.glob("*.yaml"))
SECRETS_DIR = "/run/secrets/"


@dataclass
class Image:
    """The final stage of a Dockerfile: what a container of it runs."""

    path: Path
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    healthcheck: list[str] = field(default_factory=list)
    user: str = ""
    froms: list[str] = field(default_factory=list)

    @property
    def command(self) -> list[str]:
        return [*self.entrypoint, *self.cmd]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, rest = full.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def read_dockerfile(path: Path) -> Image:
    image = Image(path)
    for keyword, rest in instructions(path):
        if keyword == "FROM":
            image = Image(path, froms=[*image.froms, rest])
        elif keyword == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                image.env[key] = value
        elif keyword == "ENTRYPOINT":
            image.entrypoint = json.loads(rest)
        elif keyword == "CMD":
            image.cmd = json.loads(rest)
        elif keyword == "HEALTHCHECK":
            image.healthcheck = json.loads(rest[rest.index("CMD") + 3 :])
        elif keyword == "USER":
            image.user = rest
    return image


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_compose(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?message}`."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if variables.get(name):
            return variables[name]
        if op and op.endswith("?"):
            raise KeyError(f"{name}: {arg}")
        return arg if op else ""

    return _VARIABLE.sub(replace, value)


def service_env(compose: Path, service: str, variables: dict[str, str]) -> dict[str, str]:
    """The RBEE_* environment a service's container gets: image ENV, then compose's."""
    spec = load_compose(compose)["services"][service]
    image = read_dockerfile(ROOT / spec["build"]["dockerfile"])
    env = {k: v for k, v in image.env.items() if k.startswith("RBEE_")}
    for key, value in spec.get("environment", {}).items():
        env[key] = interpolate(str(value), variables)
    return env


def service_image(compose: Path, service: str) -> Image:
    spec = load_compose(compose)["services"][service]
    return read_dockerfile(ROOT / spec["build"]["dockerfile"])


def relocate(
    env: dict[str, str], *, hosts: dict[str, str], secrets: dict[str, Path], data_dir: Path
) -> dict[str, str]:
    """Map container paths and compose host names to the ones of a test run.

    `/run/secrets/<name>` becomes the test's file for that secret, `/data` the test's data
    directory, and a URL whose host is a compose service name gets that service's address.
    """
    out: dict[str, str] = {}
    for key, value in env.items():
        if value.startswith(SECRETS_DIR):
            value = str(secrets[value.removeprefix(SECRETS_DIR)])
        elif value == "/data":
            value = str(data_dir)
        elif value.startswith(("http://", "https://")):
            parts = urlsplit(value)
            if parts.hostname in hosts:
                netloc = hosts[parts.hostname] + (f":{parts.port}" if parts.port else "")
                value = urlunsplit(parts._replace(netloc=netloc))
        out[key] = value
    return out
