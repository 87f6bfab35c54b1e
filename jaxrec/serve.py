"""An HTTP service over a finished seqrec or llmsrec run (``pip install -e ".[serve]"``).

    python -m jaxrec.serve --run runs/quickstart/sasrec_llm2rec [--host 127.0.0.1 --port 8000]

    GET  /health                       {"status": "ok", "run": ..., "items": N}
    POST /recommend {"history": ["50", "Star Wars (1977)"], "k": 10, "exclude_history": false, "user": null}
                                       {"items": [{"item_id", "title", "score"}, ...]}
    POST /items     {"items": [{"id": "new-1", "title": "...", "attributes": {...}}]}
                                       {"added": ["new-1"], "items": N, "seconds": ...}

New items (runs with LLM item vectors) are embedded by the run's own encoder,
loaded at start-up, and ranked with the catalogue from the next request on.

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
import threading
import time
from pathlib import Path

from jaxrec.errors import RunError
from jaxrec.recommend import USER_BATCH, ItemIdTaken, Recommender

MAX_HISTORY_ITEMS = 1000
"""Longest history a request may send (the model reads only its last max_history items)."""
MAX_BODY_BYTES = 64 * 1024
MAX_NEW_ITEMS = 1000
"""Most items one POST /items may add."""


class _Batcher:
    """Collects pending requests and scores them as one batch."""

    def __init__(self, rec: Recommender, wait_seconds: float):
        self.rec, self.wait = rec, wait_seconds
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.batches = self.requests = 0
        self.lock = threading.Lock()
        """Held while scoring or adding items: an addition never lands halfway through a batch."""

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def submit(self, history: list[str], k: int, exclude_history: bool, user: str | None):
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((history, k, exclude_history, user, future))
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
        with self.lock:
            self.batches, self.requests = self.batches + 1, self.requests + len(pending)
            users = [user for *_, user, _ in pending] if self.rec.needs_users else None
            return self.rec.top_items([history for history, *_ in pending], [k for _, k, *_ in pending],
                                      [history if exclude else () for history, _, exclude, *_ in pending], users)

    async def add_items(self, items: list[dict]) -> list[str]:
        def add():
            with self.lock:
                return self.rec.add_items(items)

        return await asyncio.get_running_loop().run_in_executor(None, add)


def create_app(rec: Recommender, batch_wait_ms: float = 2.0, new_items: bool = True):
    """The FastAPI application serving ``rec``; with ``new_items``, POST /items adds
    items (the encoder is loaded now, when the run has one)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, Field

    class RecommendRequest(BaseModel):
        history: list[str | int] = Field(min_length=1, max_length=MAX_HISTORY_ITEMS)
        k: int = Field(10, ge=1)
        exclude_history: bool = False
        user: str | int | None = None
        """Whose history it is: needed by runs whose prompts show each item's date (LLM-SRec's default)."""

    class NewItem(BaseModel):
        id: str | int
        title: str = Field(min_length=1)
        attributes: dict[str, str | list[str]] = Field(default_factory=dict)

    class NewItems(BaseModel):
        items: list[NewItem] = Field(min_length=1, max_length=MAX_NEW_ITEMS)

    batcher = _Batcher(rec, batch_wait_ms / 1000)
    new_items_refusal = None
    if new_items:
        try:
            rec.prepare_new_items()
        except RunError as err:  # an ID-only run: POST /items says why
            new_items, new_items_refusal = False, f"this run cannot take new items: {err}"

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
        return {"status": "ok", "run": str(rec.location), "items": len(rec.item_ids) - 1,
                "batches": batcher.batches, "requests": batcher.requests}

    @app.post("/recommend")
    async def recommend(body: RecommendRequest):
        if body.k > len(rec.item_ids) - 1:
            return _error(422, f"k: must be at most {len(rec.item_ids) - 1}, the catalogue's size")
        history = [str(item) for item in body.history]
        unknown = [item for item in history if not rec.knows(item)]
        if unknown:
            return _error(404, f"unknown item {unknown[0]!r}: neither an item id nor an exact title of the catalogue")
        user = None if body.user is None else str(body.user)
        if rec.needs_users and user is None:
            return _error(422, "user: this run's prompts show each item's date, so name the user whose history it is")
        if user is not None and rec.needs_users:
            if not rec.knows_user(user):
                return _error(404, f"unknown user {user!r}")
            theirs = {rec.item_index(item) for item in rec.user_history(user)}
            foreign = [item for item in history if rec.item_index(item) not in theirs]
            if foreign:
                return _error(422, f"history: item {foreign[0]!r} is not one of user {user!r}'s, whose dates "
                                   "the prompt shows")
        top = await batcher.submit(history, body.k, body.exclude_history, user)
        return {"items": [dataclasses.asdict(r) for r in top]}

    @app.post("/items")
    async def add_items(body: NewItems):
        if not new_items:
            return _error(409, new_items_refusal or "this service was started without new items")
        started = time.perf_counter()
        try:
            added = await batcher.add_items([item.model_dump() for item in body.items])
        except ItemIdTaken as err:
            return _error(409, str(err))
        except ValueError as err:  # a malformed item
            return _error(422, str(err))
        return {"added": added, "items": len(rec.item_ids) - 1, "seconds": round(time.perf_counter() - started, 3)}

    return app


@contextlib.contextmanager
def serving(app, host: str = "127.0.0.1"):
    """Serve ``app`` on a free port of ``host`` in a background thread; yields its base URL."""
    import socket

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
                                     description="Serve a finished seqrec or llmsrec run's recommendations over HTTP.")
    parser.add_argument("--run", required=True, type=Path, help="a finished seqrec or llmsrec run directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0,
                        help="how long a request waits for others to share its batch (default 2)")
    parser.add_argument("--no-new-items", action="store_true",
                        help="do not load the run's encoder at start-up (POST /items then answers 409)")
    args = parser.parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        print('error: the service needs its extra: pip install -e ".[serve]"', file=sys.stderr)
        return 2
    rec = Recommender.load(args.run)
    rec.warm_up()  # compile before the first request
    uvicorn.run(create_app(rec, args.batch_wait_ms, new_items=not args.no_new_items), host=args.host, port=args.port,
                log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
