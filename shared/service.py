"""The shell every service runs in: a FastAPI app plus its NATS endpoints and consumers.

A service module declares its handlers with decorators that return the function unchanged
(plain coroutines, callable directly in tests):

    service = Service(DECLARATION)  # services/catalog/declaration.py

    @service.endpoint(topology.RPC_CATALOG_GET)  # takes GetVideo (topology.RPC_TYPES)
    async def get_video(req: GetVideo, bus: Bus) -> Video: ...

    @service.consumer(declaration.EVENTS, Event)
    async def on_event(event, delivery: Delivery) -> None: ...

A handler for an endpoint or consumer the declaration does not name raises
`UndeclaredSubject` at import.

`service.app()` builds the FastAPI app: /healthz, /readyz (NATS connected and topology
ensured), /metrics, and the service's own routes. Connecting happens in the background
after start-up, so /healthz answers while NATS is still coming up.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from nats.micro import add_service
from nats.micro.request import Request, ServiceError
from nats.micro.service import Service as MicroService
from opentelemetry import trace
from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import contracts, ops, permissions, telemetry, topology
from .bus import Bus, RpcError
from .consumer import ConsumerLoop, Handler, OnExhausted
from .declaration import ConsumerSpec, Declaration, UndeclaredSubject
from .settings import ConfigError, Settings

log = logging.getLogger("vidmesh.service")

HTTP_SECONDS = Histogram(
    "vidmesh_http_request_seconds",
    "HTTP request handling time (to the response head)",
    ["method", "route", "status"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
)
RPC_SECONDS = Histogram(
    "vidmesh_rpc_server_seconds",
    "Request-reply handling time",
    ["subject", "outcome"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)

# `async (request, bus) -> reply`: the request is what the endpoint's kind decodes to.
RpcHandler = Callable[[Any, Bus], Awaitable[msgspec.Struct]]
# The decorators return what they are given, so a handler keeps its own signature.
R = TypeVar("R", bound=RpcHandler)
H = TypeVar("H", bound=Handler)
AppHook = TypeVar("AppHook", bound=Callable[[FastAPI], None])
StartupHook = TypeVar("StartupHook", bound=Callable[[Bus], Awaitable[None]])


@dataclass
class _Endpoint:
    subject: str
    kind: type
    handler: RpcHandler
    concurrency: int


@dataclass
class _Consumer:
    spec: ConsumerSpec
    kind: object
    handler: Handler
    concurrency: int | None
    on_exhausted: OnExhausted | None


class HttpMetrics:
    """vidmesh_http_request_seconds per method, route template and status, as pure ASGI
    middleware (Starlette's function middleware runs each request through a task group)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]  # if the app raises before it answers

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            HTTP_SECONDS.labels(scope["method"], route, str(status[0])).observe(time.perf_counter() - started)


class Service:
    def __init__(self, declaration: Declaration, version: str = "0.1.0", *, settings: type[Settings] = Settings):
        self.declaration = declaration
        self.name = declaration.name
        self.description = declaration.description
        self.version = version
        self.settings_class = settings  # what app() and run() load: the service's own subclass, if it has one
        self.settings: Settings | None = None
        self.bus: Bus | None = None
        self.ready = False
        self._endpoints: list[_Endpoint] = []
        self._consumers: list[_Consumer] = []
        self._startup: list[Callable[[Bus], Awaitable[None]]] = []
        self._loops: list[ConsumerLoop] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._micro: MicroService | None = None
        self._log_events: logging.Handler | None = None
        self._app_hooks: list[Callable[[FastAPI], None]] = []
        self.http = APIRouter()  # the service's own routes, if it has any

    # --- declaration ---------------------------------------------------------------------

    def endpoint(self, subject: str, kind: type | None = None, *, concurrency: int = 8) -> Callable[[R], R]:
        """Register a request-reply handler `async (request, bus) -> reply`; the request type
        is the subject's in `topology.RPC_TYPES` unless `kind` is given. Raises
        UndeclaredSubject when the declaration does not serve the subject."""
        kind = kind or topology.RPC_TYPES[subject][0]
        if subject not in self.declaration.serves:
            raise UndeclaredSubject(f"{self.name} does not declare that it serves {subject}")

        def register(fn: R) -> R:
            self._endpoints.append(_Endpoint(subject, kind, fn, concurrency))
            return fn

        return register

    def consumer(
        self,
        spec: ConsumerSpec,
        kind: object,
        *,
        concurrency: int | None = None,
        on_exhausted: OnExhausted | None = None,
    ) -> Callable[[H], H]:
        if spec not in self.declaration.consumes:
            raise UndeclaredSubject(f"{self.name} does not declare the consumer {spec.stream}/{spec.durable}")

        def register(fn: H) -> H:
            self._consumers.append(_Consumer(spec, kind, fn, concurrency, on_exhausted))
            return fn

        return register

    def configure_app(self, fn: AppHook) -> AppHook:
        """Called with the FastAPI app when it is built (exception handlers, middleware)."""
        self._app_hooks.append(fn)
        return fn

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine for the life of the service (cancelled on stop)."""
        self._tasks.append(asyncio.create_task(coro))

    def on_startup(self, fn: StartupHook) -> StartupHook:
        """Run after NATS is connected and the topology ensured, before readiness."""
        self._startup.append(fn)
        return fn

    # --- running -------------------------------------------------------------------------

    def app(self, settings: Settings | None = None) -> FastAPI:
        service = self

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            service.settings = settings or service.settings_class.load()
            telemetry.setup(service.name)
            starter = asyncio.create_task(service._start_logged())
            try:
                yield
            finally:
                starter.cancel()
                await service.stop()

        app = FastAPI(
            title=f"vidmesh {self.name}", description=self.description, version=self.version, lifespan=lifespan
        )

        @app.get("/healthz", include_in_schema=False)
        async def healthz() -> dict[str, str]:
            return {"status": "ok", "service": self.name}

        @app.get("/readyz", include_in_schema=False)
        async def readyz() -> JSONResponse:
            connected = bool(self.bus and self.bus.nc.is_connected)
            ok = self.ready and connected
            body = {"ready": ok, "nats_connected": connected, "topology": self.ready}
            return JSONResponse(body, status_code=200 if ok else 503)

        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

        app.include_router(self.http)
        for hook in self._app_hooks:
            hook(app)

        app.add_middleware(HttpMetrics)
        try:
            from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

            FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz,metrics")
        except ImportError:  # pragma: no cover - the package is a dependency
            pass
        return app

    async def _start_logged(self) -> None:
        try:
            await self._start()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed to start", self.name)
            raise

    async def _start(self) -> None:
        settings = self.settings
        assert settings is not None  # the app's lifespan loads them before it starts this
        delay = 0.2
        while True:  # NATS may not be up yet (containers start in any order)
            try:
                self.bus = await Bus.connect(settings, self.name, declaration=self.declaration)
                break
            except Exception as exc:
                log.warning("cannot reach NATS yet (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        while True:
            try:
                # Created by the admin user (`vidmesh up`, `vidmesh init`); a service may only
                # check that what it uses is there (services/nats_auth.py).
                await permissions.verify(self.bus.js, self.declaration)
                break
            except Exception as exc:
                log.warning("topology not ready yet (%s); retrying", exc)
                await asyncio.sleep(1.0)
        self._log_events = ops.BusLogHandler(self.name, settings.log_events_level)
        logging.getLogger().addHandler(self._log_events)
        self.background(ops.publish_forever(self.bus, self._log_events, settings.metrics_interval_s))
        for hook in self._startup:
            await hook(self.bus)
        await self._start_endpoints()  # also without endpoints: $SRV.PING/INFO/STATS list every service
        for c in self._consumers:
            max_deliver, ack_wait_s = c.spec.delivery(settings)
            loop = ConsumerLoop(
                self.bus,
                c.spec,
                c.kind,
                c.handler,
                concurrency=c.concurrency or (settings.worker_concurrency if c.spec.is_task else 16),
                max_deliver=max_deliver,
                ack_wait_s=ack_wait_s,
                on_exhausted=c.on_exhausted,
            )
            self._loops.append(loop)
            self._tasks.append(asyncio.create_task(loop.run(), name=f"consume-{c.spec.durable}"))
        self.ready = True
        log.info("%s ready", self.name)

    async def _start_endpoints(self) -> None:
        assert self.bus is not None  # connected before any endpoint is served
        self._micro = await add_service(
            self.bus.nc, name=f"vidmesh-{self.name}", version=self.version, description=self.description
        )
        for ep in self._endpoints:
            # nats-py runs one subscription's callbacks one after another; several queue
            # subscribers on the same subject give an endpoint real concurrency.
            for _ in range(ep.concurrency):
                await self._micro.add_endpoint(
                    name=ep.subject.replace(".", "_"), subject=ep.subject, handler=self._rpc_handler(ep, self.bus)
                )

    def _rpc_handler(self, ep: _Endpoint, bus: Bus) -> Callable[[Request], Awaitable[None]]:
        decoder: msgspec.json.Decoder[Any] = contracts.decoder(ep.kind)

        async def handle(request: Request) -> None:
            started = time.perf_counter()
            outcome = "ok"
            with telemetry.tracer.start_as_current_span(
                f"process {ep.subject}",
                context=telemetry.extract(request.headers),
                kind=trace.SpanKind.SERVER,
                attributes=telemetry.messaging_attributes("process", ep.subject),
            ) as span:
                try:
                    req = decoder.decode(request.data)
                    for attr, field in (("vidmesh.video.id", "video_id"), ("vidmesh.tenant", "tenant")):
                        if value := getattr(req, field, None):
                            span.set_attribute(attr, value)
                    reply = await ep.handler(req, bus)
                    await request.respond(contracts.encode(reply))
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    outcome = "bad_request"
                    raise ServiceError("bad_request", str(exc)) from None
                except RpcError as exc:
                    outcome = exc.code
                    raise ServiceError(exc.code, exc.message) from None
                finally:
                    RPC_SECONDS.labels(ep.subject, outcome).observe(time.perf_counter() - started)

        return handle

    async def stop(self) -> None:
        """Graceful drain: stop pulling, finish or nak what is in hand, close NATS."""
        self.ready = False
        if self._log_events is not None:
            logging.getLogger().removeHandler(self._log_events)
        timeout = self.settings.drain_timeout_s if self.settings else 20.0
        await asyncio.gather(*(loop.stop(timeout) for loop in self._loops), return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        if self._micro is not None:
            try:
                await self._micro.stop()
            except Exception:
                pass
        if self.bus is not None:
            await self.bus.close()
        telemetry.shutdown()


def run(service: Service, app: FastAPI | None = None) -> None:
    """Serve one service until SIGTERM/SIGINT (uvicorn turns both into a graceful stop)."""
    import uvicorn

    try:
        settings = service.settings_class.load()
    except ConfigError as exc:  # the message names the variable: no traceback to read past
        raise SystemExit(f"{service.name} cannot start: {exc}") from None
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s {service.name} %(name)s trace=%(trace_id)s %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(telemetry.TraceIdFilter())
    server = uvicorn.Server(
        uvicorn.Config(
            app or service.app(settings),
            host=settings.http_host,
            port=settings.http_port,
            log_level="warning",
            timeout_graceful_shutdown=5,
            access_log=False,
            # hostile input: the whole request head (line + headers) is bounded
            http="h11",
            h11_max_incomplete_event_size=settings.max_header_bytes,
        )
    )
    # uvicorn re-raises a captured SIGTERM/SIGINT after its graceful shutdown, through the
    # handlers that were installed before it; these make a drained service exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
