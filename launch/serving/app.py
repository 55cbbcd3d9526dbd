"""The FastAPI app of ``troupe serve``: routes, errors, the model's loading, request metrics.

Routes: ``POST /generate`` (our JSON API), ``POST /v1/completions`` and
``POST /v1/chat/completions`` (OpenAI-compatible, ``stream: true`` as server-sent
events ending in ``data: [DONE]``), ``GET /v1/models``, ``GET /health`` (the process
answers), ``GET /ready`` (the model is loaded), ``GET /metrics`` (Prometheus).

The model loads on a thread after the server starts listening, so ``/health`` answers
at once and ``/ready`` says when generation can begin; until then generation routes
answer 503. Handlers only validate, tokenize and wait on their ticket: generation runs
on the batcher's thread (launch/serving/batcher.py), so the loop always answers.

Every error has one body, OpenAI's (launch/serving/openai.py builds it and the stream
chunks): ``{"error": {"message", "type", "param", "code"}}``;
415 for a body not sent as ``Content-Type: application/json``, 422 for a body that is
not valid JSON or breaks the schema, 400 for a prompt that does not fit the context,
503 (with Retry-After) for a full queue or a model still loading, 504 when a request
outlives ``request_timeout_s``, 500 when its batch failed.

A client that hangs up abandons its request (launch/serving/batcher.py says what that
frees): Starlette stops a stream when its client goes, and a non-streamed handler
watches for the disconnect while it waits. Either is counted with status 499, nginx's
"client closed request", though no one receives it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from launch.serving.batcher import Batcher, Completion, GenerationFailed, Ticket
from launch.serving.metrics import CONTENT_TYPE, ServingMetrics
from launch.serving.openai import OpenAIReply, error_body, event_stream
from launch.serving.schemas import ChatCompletionRequest, CompletionRequest, GenerateRequest, GenerateResponse
from launch.serving.service import ModelService, ServeConfig, ServingError, load_model
from roles.agents.tool_calls import tool_call_format

log = logging.getLogger("troupe.serve")

GENERATION_ROUTES = ("/generate", "/v1/completions", "/v1/chat/completions")
CLIENT_CLOSED_REQUEST = 499
OTHER_ROUTES = ("/health", "/ready", "/metrics", "/v1/models")
UNION_BRANCHES = {"str", "list[str]", "list[TextPart]"}


@dataclass
class ServiceState:
    """What the routes see: the service once the model is loaded, or why it could not load."""

    service: ModelService | None = None
    load_error: str | None = None


def create_app(config: ServeConfig, stop_server: Callable[[], None]) -> FastAPI:
    """The app for `config`. ``stop_server`` is called when the service cannot go on
    (the model failed to load, the batcher died), so the process exits with an error."""
    metrics = ServingMetrics()
    state = ServiceState()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks: list[asyncio.Task[None]] = []

        async def start() -> None:
            try:
                model = await asyncio.to_thread(load_model, config)
            except Exception as error:  # reported on /ready and in the log; the process then exits
                log.exception("could not load the model from %s", config.model)
                state.load_error = f"{type(error).__name__}: {error}"
                stop_server()
                return
            batcher = Batcher(model.backend, model.tokenizer, metrics, config.max_batch,
                              config.max_wait_ms / 1000, config.max_queue)
            task = asyncio.create_task(batcher.run(), name="batcher")
            task.add_done_callback(_stop_when_failed(stop_server))
            tasks.append(task)
            state.service = ModelService(model, batcher, tool_call_format(config.tool_format))
            log.info("model %s loaded on %s: context %d tokens, batches of up to %d, queue of %d",
                     model.name, model.device, model.context_length, config.max_batch, config.max_queue)

        tasks.append(asyncio.create_task(start(), name="load-model"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if state.service is not None:
                state.service.batcher.close()

    app = FastAPI(title="troupe serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(RequestMetrics, metrics=metrics)

    def service() -> ModelService:
        if state.service is None:
            raise ServingError(503, "the model is still loading: poll GET /ready", headers={"Retry-After": "5"})
        return state.service

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, error: ServingError) -> JSONResponse:
        return error_response(error.status, error.message, error.param, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = describe_validation_errors(error.errors())
        return error_response(422, message, param)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # a bug, not the client's fault: answer 500 in the usual shape (uvicorn logs the traceback)
        return error_response(500, f"internal error: {type(error).__name__}: {error}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail), None, error.headers)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if state.service is not None:
            model = state.service.model
            return JSONResponse({"status": "ready", "model": model.name, "context_length": model.context_length,
                                 "device": model.device})
        if state.load_error is not None:
            return JSONResponse({"status": "failed", "error": state.load_error}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        model = service().model
        return {"object": "list", "data": [{"id": model.name, "object": "model", "owned_by": "troupe"}]}

    @app.post("/generate", response_model=GenerateResponse, dependencies=[Depends(refuse_a_body_not_sent_as_json)])
    async def generate(body: GenerateRequest, request: Request) -> GenerateResponse:
        served = service()
        prompt_ids = served.encode(body.prompt)
        params = served.sampling(body, prompt_ids, body.max_new_tokens, "max_new_tokens")
        ticket = served.submit(prompt_ids, params, stream=False, endpoint="/generate",
                               received_at=request.state.received_at)
        [choice] = await completions_of(ticket, config.request_timeout_s, request)
        return GenerateResponse(response=choice.text, prompt_tokens=len(prompt_ids),
                                completion_tokens=choice.completion_tokens,
                                finish_reason=choice.finish_reason)  # type: ignore[arg-type]

    @app.post("/v1/completions", response_model=None, dependencies=[Depends(refuse_a_body_not_sent_as_json)])
    async def completions(body: CompletionRequest, request: Request) -> Any:
        served = service()
        prompt_ids = served.encode(body.prompt)
        params = served.sampling(body, prompt_ids, body.max_tokens, "max_tokens", body.n)
        ticket = served.submit(prompt_ids, params, stream=body.stream, endpoint="/v1/completions",
                               received_at=request.state.received_at)
        reply = OpenAIReply("cmpl", "text_completion", served.model.name, len(prompt_ids), body)
        if body.stream:
            return event_stream(reply.completion_chunks(ticket, config.request_timeout_s), ticket)
        return reply.completion(await completions_of(ticket, config.request_timeout_s, request))

    @app.post("/v1/chat/completions", response_model=None, dependencies=[Depends(refuse_a_body_not_sent_as_json)])
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        served = service()
        prompt_ids = served.encode_chat(body.messages, body.tools)
        budget, budget_name = ((body.max_completion_tokens, "max_completion_tokens")
                               if body.max_completion_tokens is not None else (body.max_tokens, "max_tokens"))
        params = served.sampling(body, prompt_ids, budget, budget_name, body.n)
        ticket = served.submit(prompt_ids, params, stream=body.stream, endpoint="/v1/chat/completions",
                               received_at=request.state.received_at)
        reply = OpenAIReply("chatcmpl", "chat.completion", served.model.name, len(prompt_ids), body)
        if body.stream:
            return event_stream(reply.chat_chunks(ticket, config.request_timeout_s), ticket)
        reads_calls = bool(body.tools) and body.tool_choice != "none"
        return reply.chat(await completions_of(ticket, config.request_timeout_s, request),
                          served.tool_format if reads_calls else None)

    return app


def _stop_when_failed(stop_server: Callable[[], None]) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical("the batcher stopped: the server exits", exc_info=task.exception())
            stop_server()

    return done


def error_response(status: int, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


def is_json_media_type(content_type: str | None) -> bool:
    """``application/json`` or ``application/<anything>+json``, whatever the parameters:
    the bodies FastAPI parses as JSON."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    kind, _, subtype = media_type.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


async def refuse_a_body_not_sent_as_json(request: Request) -> None:
    """A dependency of the generation routes: 415 for a body whose Content-Type is not
    JSON. FastAPI does not parse such a body (a browser may send text/plain, or no type,
    across sites without asking first), so the schema would then call valid JSON "not
    an object"; an empty body is left to the schema, which asks for one."""
    content_type = request.headers.get("content-type")
    if is_json_media_type(content_type) or not await request.body():
        return
    sent = f"this request's is {content_type}" if content_type else "this request has no Content-Type"
    raise ServingError(415, f"send the body as JSON with the header Content-Type: application/json ({sent})")


def describe_validation_errors(errors: Any) -> tuple[str, str | None]:
    """One readable line per schema error (``temperature: Input should be ...``) and the
    first offending field."""
    lines, params = [], []
    for error in errors:
        # ("body", "messages", 0, "content", "str"): the field path, without the union branch tried
        location = [str(part) for part in error.get("loc", ())[1:] if part not in UNION_BRANCHES]
        field = ".".join(location)
        kind = error.get("type")
        if kind == "json_invalid":
            lines.append(f"the body is not valid JSON: {error.get('ctx', {}).get('error', error.get('msg'))}")
            continue
        if not field:
            lines.append("send a JSON object as the body (content-type: application/json)" if kind == "missing"
                         else f"the body must be a JSON object: {error.get('msg')}")
            continue
        lines.append(f"{field}: required" if kind == "missing" else f"{field}: {error.get('msg')}")
        params.append(field)
    unique = list(dict.fromkeys(lines))
    return "; ".join(unique), (params[0] if params else None)


async def completions_of(ticket: Ticket, timeout_s: float, request: Request) -> list[Completion]:
    """The ticket's choices; a timeout is a 504, a failed batch a 500, and a client that
    hangs up first a 499, its ticket abandoned."""
    answer = asyncio.ensure_future(ticket.completions(timeout_s))
    hang_up = asyncio.ensure_future(client_disconnects(request))
    try:
        await asyncio.wait((answer, hang_up), return_when=asyncio.FIRST_COMPLETED)
    finally:  # both tasks end here, whatever ended the wait (a stopping server cancels it)
        hang_up.cancel()
        if not answer.done():
            answer.cancel()
            ticket.abandon()
        await asyncio.gather(answer, hang_up, return_exceptions=True)
    if answer.cancelled():
        raise ServingError(CLIENT_CLOSED_REQUEST, "the client closed the connection before the response was ready")
    try:
        return answer.result()
    except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
        ticket.abandon()
        raise ServingError(504, f"no response within {timeout_s:g} s (request_timeout_s)") from None
    except GenerationFailed as error:
        raise ServingError(500, str(error)) from None


async def client_disconnects(request: Request) -> None:
    """Returns once the client has closed the connection. Only after the body has been
    read: the server's next message is then the disconnect (uvicorn waits for it)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class RequestMetrics:
    """ASGI middleware: stamps each request's arrival (``request.state.received_at``,
    ``time.monotonic()``) and, when its last byte has gone, counts it by route and status and
    times the generation routes. A response that never ends (a stream whose client left)
    is counted as a 499."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received_at = time.monotonic()
        scope.setdefault("state", {})["received_at"] = received_at
        path = scope["path"]
        endpoint = path if path in GENERATION_ROUTES or path in OTHER_ROUTES else "other"
        status = 500
        ended = False

        async def send_and_watch(message: Message) -> None:
            nonlocal status, ended
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                ended = True
                self._record(endpoint, status, time.monotonic() - received_at)

        try:
            await self.app(scope, receive, send_and_watch)
        except Exception:
            if not ended:
                self._record(endpoint, 500, time.monotonic() - received_at)
            raise
        if not ended:  # the app returned mid-response: Starlette stopped a stream whose client left
            self._record(endpoint, CLIENT_CLOSED_REQUEST, time.monotonic() - received_at)

    def _record(self, endpoint: str, status: int, seconds: float) -> None:
        self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
        if status >= 400:
            self.metrics.errors.labels(endpoint=endpoint, status=str(status)).inc()
        elif endpoint in GENERATION_ROUTES:
            self.metrics.request_latency.labels(endpoint=endpoint).observe(seconds)
