"""The services' side of the contract: FastAPI/uvicorn glue shared by queen, hive and worker.

Client code (the CLI, `shared.clients`) never imports this package, so it needs neither
FastAPI nor uvicorn.
"""
