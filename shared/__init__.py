"""The rbee contract: messages, errors, auth, SSE and typed clients.

Everything here imports only pydantic, pyjwt, httpx and the standard library, so the CLI
and any client can use it without FastAPI or llama.cpp. The services' own glue (exception
handlers, the uvicorn runner, metrics) lives in :mod:`shared.service`.
"""

__version__ = "0.1.0"
