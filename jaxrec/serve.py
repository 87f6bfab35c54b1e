"""An HTTP service over a finished seqrec run (``pip install -e ".[serve]"``).

    python -m jaxrec.serve --run runs/quickstart/sasrec_llm2rec [--host 127.0.0.1 --port 8000]

    GET  /health                       {"status": "ok", "run": ..., "items": N}
    POST /recommend {"history": ["50", "Star Wars (1977)"], "k": 10, "exclude_history": false}
                                       {"items": [{"item_id", "title", "score"}, ...]}

Requests that arrive together are scored together: a batcher collects them
for at most ``--batch-wait-ms`` (or until a batch of the recommender's fixed
size is full) and scores them in one call of the jitted function, whose
shapes never change, so nothing compiles after the start-up warm-up. A bad
request gets a 4xx with a one-line reason and never reaches the model.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import sys
from pathlib import Path

from jaxrec.recommend import USER_BATCH, Recommender

MAX_HISTORY_ITEMS = 1000
"""Longest history a request may send (the model reads only its last max_history items)."""
MAX_BODY_BYTES = 64 * 1024


class _Batcher:
    """Collects pending requests and scores them as one batch."""

    def __init__(self, rec: Recommender, wait_seconds: float):
        self.rec, self.wait = rec, wait_seconds
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.batches = self.requests = 0

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def submit(self, history: list[str], k: int, exclude_history: bool):
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((history, k, exclude_history, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pending = [await self.queue.get()]
            deadline = loop.time() + self.wait
            while len(pending) < USER_BATCH:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    pending.append(await asyncio.wait_for(self.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            try:
                results = await loop.run_in_executor(None, self._score, pending)
            except Exception as err:  # a failure of the batch fails its requests, not the service
                results = [err] * len(pending)
            for (*_, future), result in zip(pending, results):
                if not future.done():
                    (future.set_exception if isinstance(result, Exception) else future.set_result)(result)

    def _score(self, pending) -> list:
        self.batches, self.requests = self.batches + 1, self.requests + len(pending)
        scores = self.rec.scores([history for history, *_ in pending])
        out = []
        for row, (history, k, exclude_history, _) in zip(scores, pending):
            out.append(self.rec.top_k(row, k, history if exclude_history else ()))
        return out


def create_app(rec: Recommender, batch_wait_ms: float = 2.0):
    """The FastAPI application serving ``rec``."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, Field

    num_items = len(rec.item_ids) - 1

    class RecommendRequest(BaseModel):
        history: list[str | int] = Field(min_length=1, max_length=MAX_HISTORY_ITEMS)
        k: int = Field(10, ge=1, le=num_items)
        exclude_history: bool = False

    batcher = _Batcher(rec, batch_wait_ms / 1000)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="jaxrec", description=f"Recommendations from {rec.location}", lifespan=lifespan)

    def _error(status: int, reason: str) -> JSONResponse:
        return JSONResponse({"error": reason}, status_code=status)

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return _error(413, f"request body over {MAX_BODY_BYTES} bytes")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(422, f"{where or 'body'}: {first.get('msg', 'invalid request')}")

    @app.get("/health")
    async def health():
        return {"status": "ok", "run": str(rec.location), "items": num_items,
                "batches": batcher.batches, "requests": batcher.requests}

    @app.post("/recommend")
    async def recommend(body: RecommendRequest):
        history = [str(item) for item in body.history]
        unknown = [item for item in history if not rec.knows(item)]
        if unknown:
            return _error(404, f"unknown item {unknown[0]!r}: neither an item id nor an exact title of the catalogue")
        top = await batcher.submit(history, body.k, body.exclude_history)
        return {"items": [dataclasses.asdict(r) for r in top]}

    return app


@contextlib.contextmanager
def serving(app, host: str = "127.0.0.1"):
    """Serve ``app`` on a free port of ``host`` in a background thread; yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"the service did not start on {host}:{port}")
            time.sleep(0.05)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxrec.serve",
                                     description="Serve a finished seqrec run's recommendations over HTTP.")
    parser.add_argument("--run", required=True, type=Path, help="a finished seqrec run directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0,
                        help="how long a request waits for others to share its batch (default 2)")
    args = parser.parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        print('error: the service needs its extra: pip install -e ".[serve]"', file=sys.stderr)
        return 2
    rec = Recommender.load(args.run)
    rec.warm_up()  # compile before the first request
    uvicorn.run(create_app(rec, args.batch_wait_ms), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
