"""The dashboard web app: the page (`/`, static files), the JSON API (`serving.dashboard.api`) and a
server-sent event stream (`/api/live`) fed by the pipeline's Redis pub/sub channel, so the page redraws
when a forecast step lands (`event: step`) and about every two seconds with fresh stream health
(`event: health`). Also the ways to run it: `serve()` (blocking) and `start_in_thread()` (the demo's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import redis
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from redis.exceptions import RedisClusterException

from serving.client import AsyncNotifications
from serving.config import RedisSettings
from serving.dashboard.api import router
from serving.dashboard.reader import DashboardReader
from serving.sink import connect, connect_async, redis_address, redis_target
from stream.network import Network

STATIC = Path(__file__).parent / "static"
HEALTH_EVERY_S = 2.0
log = logging.getLogger(__name__)


def create_app(settings: RedisSettings, network: Network, *, registry: Path | None = None) -> FastAPI:
    """The ASGI app for one network's keys in the configured Redis (a server or a cluster). Connects at once,
    so a wrong setting is a one-line `RedisStartError` here; a Redis lost later answers 503 per request."""
    app = FastAPI(
        title="sensorcast dashboard",
        version="1",
        description="Live forecasts, online accuracy, models and stream health of one sensor network. "
        "The page at `/` draws from these routes; `/api/live` (server-sent events, not listed) "
        "announces each new forecast step.",
    )
    app.state.reader = DashboardReader(
        connect(settings), network, prefix=settings.key_prefix, registry=registry
    )
    at = redis_address(redis_target(settings)[0])
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(redis.RedisError)
    async def redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        return JSONResponse({"detail": f"Redis unavailable at {at}: {exc}"}, status_code=503)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/live", include_in_schema=False)
    async def live(request: Request) -> StreamingResponse:
        return StreamingResponse(
            _live_events(request, settings, app.state.reader),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app


def _sse(event: str, data: bytes) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


async def _live_events(
    request: Request, settings: RedisSettings, reader: DashboardReader
) -> AsyncIterator[bytes]:
    """`step` per pub/sub notification; `health` every HEALTH_EVERY_S; ends when the browser goes away."""
    client = connect_async(settings)
    notes: AsyncNotifications | None = None
    try:
        notes = await AsyncNotifications.open(client, reader.keys.channel)
        yield b"retry: 2000\n" + _sse("hello", orjson.dumps({"channel": reader.keys.channel}))
        next_health = 0.0
        while not await request.is_disconnected():
            note = await notes.get(0.5)
            if note is not None:
                yield _sse("step", orjson.dumps(note))
            if time.monotonic() >= next_health:
                next_health = time.monotonic() + HEALTH_EVERY_S
                health = await asyncio.to_thread(reader.health)
                yield _sse("health", orjson.dumps(health))
    except (redis.RedisError, RedisClusterException, OSError) as exc:
        yield _sse("error", orjson.dumps({"detail": f"Redis unavailable: {exc}"}))
    finally:
        with contextlib.suppress(Exception):
            if notes is not None:
                await notes.aclose()
            await client.aclose()


@dataclass
class RunningDashboard:
    """A dashboard served by uvicorn in a daemon thread."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)


def _free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _config(app: FastAPI, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2, access_log=False
    )


def start_in_thread(
    settings: RedisSettings,
    network: Network,
    port: int = 8765,
    *,
    host: str = "127.0.0.1",
    registry: Path | None = None,
    timeout_s: float = 15.0,
) -> RunningDashboard:
    """Serve the dashboard in a background thread; a taken `port` falls back to a free one. Returns its URL."""
    app = create_app(settings, network, registry=registry)
    server = uvicorn.Server(_config(app, host, port if port and _free(host, port) else 0))
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the dashboard did not start on {host}:{port} within {timeout_s:.0f} s")
        time.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return RunningDashboard(f"http://{host}:{bound}/", server, thread)


def serve(
    settings: RedisSettings,
    network: Network,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    registry: Path | None = None,
) -> None:
    """Serve the dashboard until interrupted."""
    uvicorn.Server(_config(create_app(settings, network, registry=registry), host, port)).run()
