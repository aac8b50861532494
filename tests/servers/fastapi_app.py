"""FastAPI app for the benches: `sdk-compare`, `overhead --app fastapi` and `accuracy`.

Run under uvicorn (needs the bench venv: fastapi, uvicorn, opentelemetry-*):
  python -m uvicorn fastapi_app:app --app-dir tests/servers --port 8000 --http h11 --workers 1

Environment (each part is off unless its variable is set, so the overhead bench measures a
plain app):
  SDK_COMPARE_OTLP_TRACES=URL  trace with the OpenTelemetry Python SDK (FastAPIInstrumentor +
                               BatchSpanProcessor + OTLP/HTTP exporter to URL), the way a user
                               would by hand: the reference `sdk-compare` holds the agent's
                               spans against.
  APP_TIMING_LOG=FILE          append one line per request, "<id> <microseconds>": the app's
                               own duration of the request, timed by an ASGI middleware with
                               time.perf_counter() from the moment uvicorn hands it the parsed
                               request to the return of the send of the response's last body
                               chunk. <id> is the trace id of the request's W3C `traceparent`,
                               else its `x-request-id`, else "-".
Routes:
  GET /users/{user_id}          200, small JSON
  GET /items/{item_id}/detail   200, small JSON
  GET /error                    500 (returned, not raised: no traceback noise)
  GET /sleep/{ms}               200 after an asyncio sleep of ms milliseconds
"""
import asyncio
import os
import time

from fastapi import FastAPI
from fastapi.responses import JSONResponse

app = FastAPI()


@app.get("/users/{user_id}")
async def user(user_id: int):
    return {"id": user_id, "name": f"user-{user_id}"}


@app.get("/items/{item_id}/detail")
async def item_detail(item_id: int):
    return {"id": item_id, "detail": "x" * 64}


@app.get("/error")
async def error():
    return JSONResponse({"error": "boom"}, status_code=500)


@app.get("/sleep/{ms}")
async def sleep(ms: int):
    await asyncio.sleep(ms / 1000)
    return {"slept_ms": ms}


def request_id(scope):
    """Trace id of the `traceparent` header, else `x-request-id`, else "-"."""
    headers = dict(scope.get("headers") or [])
    parts = headers.get(b"traceparent", b"").decode("latin-1").split("-")
    if len(parts) >= 4 and len(parts[1]) == 32:
        return parts[1]
    return headers.get(b"x-request-id", b"-").decode("latin-1")


class TimingMiddleware:
    """The app's own timing of every HTTP request, as a framework middleware measures it."""

    def __init__(self, inner, log):
        self.inner = inner
        self.log = log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        t0 = time.perf_counter()
        done = []

        async def timed_send(message):
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.append(time.perf_counter())

        try:
            await self.inner(scope, receive, timed_send)
        finally:
            end = done[0] if done else time.perf_counter()
            self.log.write("%s %.1f\n" % (request_id(scope), (end - t0) * 1e6))


if os.environ.get("SDK_COMPARE_OTLP_TRACES"):
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Resource.create() reads OTEL_SERVICE_NAME, the same variable the agent reads from this
    # process's environment: both sides report the same service name.
    provider = TracerProvider(resource=Resource.create())
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=os.environ["SDK_COMPARE_OTLP_TRACES"]))
    )
    trace.set_tracer_provider(provider)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)

if os.environ.get("APP_TIMING_LOG"):
    # Outermost: wraps the SDK's middleware too when both are on. Line-buffered, one process.
    app = TimingMiddleware(app, open(os.environ["APP_TIMING_LOG"], "a", buffering=1))
