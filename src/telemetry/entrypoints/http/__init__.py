"""The ingest HTTP entrypoint, one idea per module:

- `app.py`: the two Litestar apps (public, operations) of one process, built from the container;
- `server.py`: what a server process does once (`app_for` a container, `app_from_env` for
  uvicorn's several processes, GC tuning);
- `ingest.py`: `POST /v1/readings`; `bodies.py`: reading and decoding its body;
- `errors.py`: one exception per refusal and the one table from outcome to status;
- `operations.py`: /healthz, /readyz, /metrics; `openapi.py`: the API document;
- `sender.py`: the threads that run the blocking queue sends.

Bodies are read and decoded here, not by Litestar's signature model, so the contract's
statuses hold exactly: 400 only for what cannot be decoded, 413 while the body streams in,
422 with problems by reading index and field.
"""
