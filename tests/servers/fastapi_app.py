"""FastAPI app instrumented with the OpenTelemetry Python SDK, for `cargo xtask bench sdk-compare`.

The SDK's spans are the reference the agent's spans are compared with: the app is traced the way
a user would trace it by hand (FastAPIInstrumentor + BatchSpanProcessor + OTLP/HTTP exporter),
while the agent observes the same process from the kernel without touching it.

Run under uvicorn (needs the bench venv: fastapi, uvicorn, opentelemetry-*):
  OTEL_SERVICE_NAME=sdk-compare-app SDK_COMPARE_OTLP_TRACES=http://127.0.0.1:PORT/v1/traces \
  python -m uvicorn fastapi_app:app --app-dir tests/servers --port 8000 --http h11 --workers 1
Routes:
  GET /users/{user_id}          200, small JSON
  GET /items/{item_id}/detail   200, small JSON
  GET /error                    500 (returned, not raised: no traceback noise)
  GET /sleep/{ms}               200 after an asyncio sleep of ms milliseconds
"""
import asyncio
import os

from fastapi import FastAPI
from fastapi.responses import JSONResponse
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


FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
