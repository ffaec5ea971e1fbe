"""The queen's management routes in process: hive start/stop and model delete, forwarded
to stand-in hives on real sockets."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from shared.auth import Audience, Role, mint_token
from tests.procs import free_port
from tests.queen.conftest import assert_envelope, heartbeat, running_queen
from tests.queen.fakehive import FakeHive, fake_hive

WORKER = {
    "id": "w1",
    "state": "idle",
    "url": "http://127.0.0.1:9",
    "model": "file:/models/tiny.gguf",
    "slots": {"total": 1, "busy": 0},
}


async def register(queen: httpx.AsyncClient, hive_id: str, hive: FakeHive) -> None:
    body = {"url": hive.url, "version": "1"}
    assert (await queen.put(f"/v2/hives/{hive_id}", json=body)).status_code == 200


def deletes(hive: FakeHive) -> list[str]:
    return [path for method, path in hive.requests if method == "DELETE"]


async def test_a_model_delete_reaches_only_the_hives_that_hold_it(
    queen: httpx.AsyncClient,
) -> None:
    with fake_hive({"tiny", "other"}) as a, fake_hive({"tiny"}) as b, fake_hive() as c:
        for hive_id, hive in [("a", a), ("b", b), ("c", c)]:
            await register(queen, hive_id, hive)
        # A hive that does not answer is no reason to fail: it is left out.
        down = {"url": f"http://127.0.0.1:{free_port()}", "version": "1"}
        await queen.put("/v2/hives/down", json=down)

        assert (await queen.delete("/v2/models/other")).status_code == 204
        assert (deletes(a), deletes(b), deletes(c)) == (["/v1/models/other"], [], [])
        assert "other" not in a.models

        assert (await queen.delete("/v2/models/tiny")).status_code == 204
        assert a.models == set() and b.models == set()
        listed = (await queen.get("/v2/models")).json()["data"]
        assert listed == []

        assert_envelope(await queen.delete("/v2/models/tiny"), 404, "MODEL_NOT_FOUND")
        assert deletes(c) == []


async def test_a_model_in_use_is_409_from_its_hive_and_a_hive_can_be_named(
    queen: httpx.AsyncClient,
) -> None:
    with fake_hive({"tiny"}) as a, fake_hive({"tiny"}) as b:
        await register(queen, "a", a)
        await register(queen, "b", b)
        b.in_use.add("tiny")
        error = assert_envelope(
            await queen.delete("/v2/models/tiny?hive_id=b"), 409, "MODEL_IN_USE"
        )
        assert error["details"]["hive_id"] == "b"
        assert deletes(a) == [] and b.models == {"tiny"}

        assert (await queen.delete("/v2/models/tiny?hive_id=a")).status_code == 204
        assert a.models == set() and b.models == {"tiny"}
        assert_envelope(await queen.delete("/v2/models/tiny?hive_id=a"), 404, "MODEL_NOT_FOUND")
        assert_envelope(await queen.delete("/v2/models/tiny?hive_id=ghost"), 404, "HIVE_NOT_FOUND")
        bad_id = assert_envelope(await queen.delete("/v2/models/Bad!Id"), 400, "VALIDATION_ERROR")
        assert bad_id["param"] == "model_id"
        bad_hive = await queen.delete("/v2/models/tiny?hive_id=No_Such")
        assert assert_envelope(bad_hive, 400, "VALIDATION_ERROR")["param"] == "hive_id"


async def test_a_hive_added_by_url_cannot_be_started_but_can_be_stopped(
    queen: httpx.AsyncClient,
) -> None:
    with fake_hive() as hive:
        added = await queen.post("/v2/hives", json={"id": "h1", "url": hive.url})
        assert added.status_code == 201
        await queen.post("/v2/hives/h1/heartbeat", json=heartbeat(hive.url, workers=[WORKER]))
        assert len((await queen.get("/v2/workers")).json()["data"]) == 1

        error = assert_envelope(await queen.post("/v2/hives/h1/start"), 409, "HIVE_NOT_MANAGED")
        assert "added by URL" in error["message"]
        assert not hive.stopped

        stopped = await queen.post("/v2/hives/h1/stop")
        assert stopped.status_code == 200, stopped.text
        assert stopped.json() == {"id": "h1", "url": hive.url, "status": "stopped"}
        assert ("POST", "/v1/shutdown") in hive.requests
        # It and its workers are not offered any more, without waiting for it to go stale.
        assert (await queen.get("/v2/workers")).json()["data"] == []
        assert (await queen.get("/v2/hives/h1")).json()["state"] == "offline"
        again = await queen.post("/v2/hives/h1/stop")
        assert again.json()["status"] == "not_running"
        assert hive.requests.count(("POST", "/v1/shutdown")) == 1

        for action in ("start", "stop"):
            ghost = await queen.post(f"/v2/hives/ghost/{action}")
            assert_envelope(ghost, 404, "HIVE_NOT_FOUND")


async def test_only_operators_may_start_stop_hives_and_delete_models(tmp_path: Path) -> None:
    secret_file = tmp_path / "jwt.secret"
    secret_file.write_text("s" * 40)
    os.chmod(secret_file, 0o600)

    def bearer(role: Role) -> dict[str, str]:
        token = mint_token("s" * 40, role=role, audience=Audience.QUEEN, ttl_s=60)
        return {"Authorization": f"Bearer {token}"}

    async with running_queen(tmp_path / "q", jwt_secret_file=secret_file) as queen:
        for role in (Role.CLIENT, Role.HIVE):
            for method, path in [
                ("POST", "/v2/hives/h1/start"),
                ("POST", "/v2/hives/h1/stop"),
                ("DELETE", "/v2/models/tiny"),
            ]:
                response = await queen.request(method, path, headers=bearer(role))
                assert_envelope(response, 403, "FORBIDDEN")
        operator = await queen.post("/v2/hives/h1/start", headers=bearer(Role.OPERATOR))
        assert_envelope(operator, 404, "HIVE_NOT_FOUND")
