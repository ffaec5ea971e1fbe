"""queen-rbee: the public OpenAI API, scheduler, hive registry and SSE relay of rbee.

Modules, and who owns what (every piece of mutable state has one owner; all of them run
on the one event loop, and none awaits between a read that decides and the write):

* `registry`   hives (SQLite, survives restarts) and each hive's last snapshot (memory);
               written by heartbeats, registrations and the poller, never elsewhere.
* `scheduler`  pure placement functions; no state, no I/O.
* `dispatcher` in-flight counts per worker, the per-model queues, cold starts.
* `relay`      the aiohttp session to workers and the byte pumps (the token path).
* `inference`  one request end to end: lease, open, fail over, relay, clean up.
* `jobs`       job ids in flight, for `DELETE /v2/tasks/{id}`.
* `control`    httpx calls to hives (control plane); `hostctl` SSH start/stop of hives;
               `poller` snapshots of hives that do not send heartbeats.
* `routes/`    thin HTTP handlers; `app` wires it all in `create_app(settings)`.
"""
