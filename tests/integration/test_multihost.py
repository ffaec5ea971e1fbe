"""rbee across machines, without containers: a queen and two hives, each in a network namespace.

Topology: one bridge in a "switch" namespace; the queen, hive 1 and hive 2 each get a namespace
with a veth into it and an address of the test's own subnet; the test itself (root namespace)
reaches them through one more veth. The services are started with the images' commands and
the environment the compose files give them (hive 1 as compose.yaml's `hive`, hive 2 as the
second node of compose.hive.yaml), every one bound to 0.0.0.0 with the API key and the cluster
secret, so the queen reaches each hive and its workers only at their non-loopback addresses.

Skipped, with the reason, only where the machine refuses network namespaces.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.deploy.images import DOCKER, relocate, service_env, service_image
from tests.procs import VENV_BIN, Processes, Service, wait_until

pytestmark = pytest.mark.integration

# Only timers and threads are changed from what the containers run, so the test takes seconds.
FAST = {
    "RBEE_HIVE_HEARTBEAT_INTERVAL_S": "0.5",
    "RBEE_WORKER_THREADS": "1",
    "RBEE_WORKER_ORPHAN_GRACE_S": "10",
}


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


def netns_refusal() -> str | None:
    """Why this machine cannot run the test, or None when network namespaces work."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"rbee-probe-{uuid.uuid4().hex[:8]}"
    added = _ip("netns", "add", probe)
    if added.returncode != 0:
        return f"`ip netns add` refused: {added.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


@dataclass
class Net:
    """Namespaces on one bridge; `addresses[name]` is the address of namespace `name`."""

    tag: str
    subnet: ipaddress.IPv4Network
    namespaces: list[str] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)

    def ns(self, name: str) -> str:
        return f"rbee-{self.tag}-{name}"

    def run(self, *args: str) -> None:
        result = _ip(*args)
        if result.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")

    def add_namespace(self, name: str) -> str:
        ns = self.ns(name)
        self.run("netns", "add", ns)
        self.namespaces.append(ns)
        self.run("-n", ns, "link", "set", "lo", "up")
        return ns

    def build(self, names: list[str]) -> None:
        switch = self.add_namespace("sw")
        self.run("-n", switch, "link", "add", "br0", "type", "bridge")
        self.run("-n", switch, "link", "set", "br0", "up")
        hosts = list(self.subnet.hosts())
        for index, name in enumerate(names):
            ns = self.add_namespace(name)
            address = str(hosts[index])
            self._cable(f"rb{self.tag}{index}", ns, address)
            self.addresses[name] = address
        self._cable(f"rb{self.tag}t", None, str(hosts[-1]))

    def _cable(self, end: str, ns: str | None, address: str) -> None:
        """A veth from the bridge to `ns` (as eth0), or to the root namespace, with `address`."""
        switch = self.ns("sw")
        self.run("link", "add", end, "type", "veth", "peer", "name", f"{end}s")
        self.links.append(end)  # deleting one end (or its namespace) deletes the pair
        self.run("link", "set", f"{end}s", "netns", switch)
        self.run("-n", switch, "link", "set", f"{end}s", "master", "br0", "up")
        where = ["-n", ns] if ns else []
        if ns:
            self.run("link", "set", end, "netns", ns, "name", "eth0")
            end = "eth0"
        self.run(*where, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", end)
        self.run(*where, "link", "set", end, "up")

    def teardown(self) -> None:
        for link in self.links:
            _ip("link", "del", link)
        for ns in reversed(self.namespaces):
            _ip("netns", "del", ns)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 no route uses; where to start depends on the pid, so parallel runs differ."""
    routes = _ip("-4", "route", "show", "table", "all").stdout
    start = os.getpid() % 200
    for step in range(200):
        third = 17 + (start + step) % 200
        if f"10.231.{third}." not in routes:
            return ipaddress.IPv4Network(f"10.231.{third}.0/24")
    raise RuntimeError("no free 10.231.x.0/24 subnet for the test network")


@pytest.fixture
def net() -> Iterator[Net]:
    refusal = netns_refusal()
    if refusal is not None:
        pytest.skip(f"network namespaces unavailable here: {refusal}")
    network = Net(tag=f"{os.getpid() % 100000}", subnet=_free_subnet())
    try:
        network.build(["queen", "h1", "h2"])
        yield network
    finally:
        network.teardown()


@pytest.fixture
def closing() -> Iterator[contextlib.ExitStack]:
    """Clients of the test, closed at teardown (an unclosed socket fails the suite)."""
    with contextlib.ExitStack() as stack:
        yield stack


def start_in(
    processes: Processes, net: Net, name: str, command: list[str], env: dict[str, str], url: str
) -> Service:
    """Start `command` inside namespace `name`, tracked (and killed) by `processes`."""
    argv = ["ip", "netns", "exec", net.ns(name), str(VENV_BIN / command[0]), *command[1:]]
    log_path = processes.log_dir / f"{name}-{len(processes.started)}.log"
    base = {k: v for k, v in os.environ.items() if not k.startswith("RBEE_")}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**base, "PYTHONUNBUFFERED": "1", **env},
            start_new_session=True,
        )
    service = Service(proc, log_path, url, argv)
    processes.started.append(service)
    return service


def data_events(response: httpx.Response) -> list[Any]:
    """The `data:` payloads of an SSE response, `[DONE]` as a string."""
    events: list[Any] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line.removeprefix("data: ")
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def healthcheck_passes(net: Net, name: str, healthcheck: list[str], env: dict[str, str]) -> bool:
    """The image's HEALTHCHECK command, run in the service's namespace."""
    argv = ["ip", "netns", "exec", net.ns(name), str(VENV_BIN / healthcheck[0]), *healthcheck[1:]]
    base = {k: v for k, v in os.environ.items() if not k.startswith("RBEE_")}
    return (
        subprocess.run(argv, env={**base, **env}, capture_output=True, timeout=10).returncode == 0
    )


def test_queen_and_two_hives_on_separate_hosts_share_inference(
    net: Net,
    processes: Processes,
    closing: contextlib.ExitStack,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    key = secrets.token_hex(24)
    secret_files = {}
    for name, content in (("rbee_api_key", key), ("rbee_jwt_secret", secrets.token_hex(32))):
        path = tmp_path / name
        path.write_text(content + "\n")
        path.chmod(0o600)
        secret_files[name] = path
    queen_ip, h1_ip, h2_ip = (net.addresses[n] for n in ("queen", "h1", "h2"))
    queen_url = f"http://{queen_ip}:8080"

    def env_of(compose: str, service: str, data: str, **variables: str) -> dict[str, str]:
        env = service_env(DOCKER / compose, service, variables)
        hosts = {"queen": queen_ip, "hive": h1_ip}
        return relocate(env, hosts=hosts, secrets=secret_files, data_dir=tmp_path / data)

    queen_env = env_of("compose.yaml", "queen", "queen")
    h1_env = {**env_of("compose.yaml", "hive", "h1"), **FAST}
    h2_env = {
        **env_of(
            "compose.hive.yaml",
            "hive",
            "h2",
            RBEE_HIVE_ID="node2",
            RBEE_QUEEN_URL=queen_url,
            RBEE_HIVE_ADVERTISE_URL=f"http://{h2_ip}:9200",
        ),
        **FAST,
    }
    assert queen_env["RBEE_QUEEN_HOST"] == h1_env["RBEE_HIVE_HOST"] == "0.0.0.0"
    queen_image = service_image(DOCKER / "compose.yaml", "queen")
    hive_image = service_image(DOCKER / "compose.yaml", "hive")

    queen = start_in(processes, net, "queen", queen_image.command, queen_env, queen_url)
    queen.wait_healthy()
    auth = {"Authorization": f"Bearer {key}"}
    http = closing.enter_context(
        httpx.Client(base_url=queen_url, headers=auth, timeout=10, trust_env=False)
    )
    assert httpx.get(queen_url + "/v2/hives", trust_env=False).status_code == 401

    hives = {
        "gpu-node-1": start_in(
            processes, net, "h1", hive_image.command, h1_env, f"http://{h1_ip}:9200"
        ),
        "node2": start_in(processes, net, "h2", hive_image.command, h2_env, f"http://{h2_ip}:9200"),
    }
    for hive in hives.values():
        hive.wait_healthy()

    def registered() -> dict[str, Any]:
        data = http.get("/v2/hives").json()["data"]
        return {h["id"]: h for h in data if h["state"] == "online"}

    wait_until(lambda: set(registered()) == set(hives), timeout=20, what="both hives online")
    assert {h["id"]: h["url"] for h in registered().values()} == {
        "gpu-node-1": f"http://{h1_ip}:9200",
        "node2": f"http://{h2_ip}:9200",
    }
    assert healthcheck_passes(net, "queen", queen_image.healthcheck, queen_env)
    assert healthcheck_passes(net, "h2", hive_image.healthcheck, h2_env)

    model = f"file:{tiny_model}"
    for hive_id in hives:
        spawn = http.post("/v2/workers", json={"model": model, "hive_id": hive_id})
        assert spawn.status_code == 202, spawn.text

    def ready_workers() -> dict[str, dict[str, Any]]:
        data = http.get("/v2/workers").json()["data"]
        return {w["id"]: w for w in data if w["state"] in ("idle", "busy")}

    wait_until(
        lambda: {w["hive_id"] for w in ready_workers().values()} == set(hives),
        timeout=60,
        what="a ready worker on each hive",
    )
    workers = ready_workers()
    hosts = {w["hive_id"]: httpx.URL(w["url"]).host for w in workers.values()}
    assert hosts == {"gpu-node-1": h1_ip, "node2": h2_ip}  # not loopback: the queen reached them

    served = []
    for _ in range(6):
        body = {"model": model, "prompt": "Hello", "max_tokens": 4}
        with http.stream("POST", "/v2/tasks", json=body, timeout=60) as response:
            assert response.status_code == 200, response.read()
            events = data_events(response)
        assert events[-2]["type"] == "end" and events[-1] == "[DONE]", events
        served.append(next(e for e in events if isinstance(e, dict) and e["type"] == "started"))
    assert {workers[s["worker_id"]]["hive_id"] for s in served} == set(hives)

    def sdk(api_key: str) -> openai.OpenAI:
        client = openai.OpenAI(base_url=queen_url + "/v1", api_key=api_key, max_retries=0)
        return closing.enter_context(client)

    reply = sdk(key).completions.create(model=model, prompt="Once", max_tokens=4)
    assert reply.choices[0].text is not None
    with pytest.raises(openai.AuthenticationError):
        sdk("x" * 32).completions.create(model=model, prompt="Once", max_tokens=4)
