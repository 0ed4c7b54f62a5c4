"""The route table: one line per path. Both trailing-slash forms are registered where
clients send both, since a redirect would turn MLflow's POST into a GET."""

from __future__ import annotations

from aiohttp import web

from servegate.ingress import control, databricks, health, openai
from servegate.ingress.body import expect_continue


def setup_routes(app: web.Application) -> None:
    r = app.router
    # Data plane, Databricks shape. Query routes refuse an oversized body before it is sent.
    r.add_post(
        "/serving-endpoints/{name}/invocations",
        databricks.invocations,
        expect_handler=expect_continue,
    )
    r.add_post(
        "/serving-endpoints/{name}/served-models/{entity}/invocations",
        databricks.entity_invocations,
        expect_handler=expect_continue,
    )
    # Data plane, OpenAI shape (base URL <host>/serving-endpoints or <host>/v1).
    for base in ("/serving-endpoints", "/v1"):
        r.add_post(
            f"{base}/chat/completions", openai.chat_completions, expect_handler=expect_continue
        )
        r.add_post(f"{base}/completions", openai.completions, expect_handler=expect_continue)
        r.add_post(f"{base}/embeddings", openai.embeddings, expect_handler=expect_continue)
        r.add_get(f"{base}/models", openai.list_models)
    # Control plane, read side.
    for path in ("/api/2.0/serving-endpoints", "/api/2.0/serving-endpoints/"):
        r.add_get(path, databricks.list_endpoints)
    for path in ("/api/2.0/serving-endpoints/{name}", "/api/2.0/serving-endpoints/{name}/"):
        r.add_get(path, databricks.get_endpoint)
    r.add_get("/api/2.0/serving-endpoints/{name}/openapi", databricks.get_openapi)
    # Control plane, write side (--state-dir).
    for path in ("/api/2.0/serving-endpoints", "/api/2.0/serving-endpoints/"):
        r.add_post(path, control.create_endpoint, expect_handler=expect_continue)
    for path in ("/api/2.0/serving-endpoints/{name}", "/api/2.0/serving-endpoints/{name}/"):
        r.add_delete(path, control.delete_endpoint)
    endpoint = "/api/2.0/serving-endpoints/{name}"
    for method, suffix, handler in (
        ("PUT", "config", control.update_config),
        ("PUT", "ai-gateway", control.update_ai_gateway),
        ("PUT", "rate-limits", control.update_rate_limits),
        ("PATCH", "tags", control.patch_tags),
    ):
        r.add_route(method, f"{endpoint}/{suffix}", handler, expect_handler=expect_continue)
    r.add_get("/.well-known/databricks-config", databricks.databricks_config_probe)
    # Operations.
    r.add_get("/healthz", health.healthz)
    r.add_get("/readyz", health.readyz)
    r.add_get("/metrics", health.metrics)
