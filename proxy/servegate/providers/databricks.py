"""Another serving endpoint as the upstream: a Databricks workspace, or another servegate.

``databricks_workspace_url`` + ``databricks_api_token``; the request goes to
``/serving-endpoints/{name}/invocations`` with the unified body, which both the platform and
servegate accept, so servegate can sit in front of servegate. The upstream's own errors
arrive as ``{"error_code", "message"}`` and are wrapped like any provider's.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

from servegate.providers.openai import OpenAIFormatProvider
from servegate.spec.endpoint import ExternalModel, Task


class DatabricksServingProvider(OpenAIFormatProvider):
    name = "databricks-model-serving"
    sends_model = False

    def __init__(self, model: ExternalModel, secrets: Mapping[str, str]) -> None:
        super().__init__(model, secrets)
        config = model.databricks_model_serving_config
        if config is None:
            raise ValueError("provider 'databricks-model-serving' needs its config")
        base = config.databricks_workspace_url.rstrip("/")
        self._url = f"{base}/serving-endpoints/{quote(model.name, safe='')}/invocations"
        self._headers = {"Authorization": f"Bearer {secrets['databricks_api_token']}"}

    def upstream_url(self, task: Task) -> str:
        return self._url

    def auth_headers(self) -> Mapping[str, str]:
        return self._headers
