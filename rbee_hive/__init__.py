"""rbee-hive: the per-machine daemon. It knows the machine's resources, keeps the model
catalog, downloads models, and spawns and supervises `llm-worker-rbee` processes.

Modules, in the order a request meets them: `app` (the FastAPI app and its lifespan),
`routes/`, `hive` (the long-lived parts), `pool` (worker supervision), `provisioner`
with `sources` and `downloads` (getting models onto disk), `catalog` (hive.db),
`resources` (RAM, disk, GPUs, preflight), `heartbeat` (to the queen).
"""
