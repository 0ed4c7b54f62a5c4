"""Azure OpenAI: OpenAI's bodies on deployment paths, by API key or Microsoft Entra ID.

``openai_api_type: azure`` sends the ``api-key`` header; ``azuread`` sends a bearer token
from a client-credentials exchange (see ``transport/credentials.py``). Azure routes by the
deployment in the path, so the body carries no ``model``. Everything else, including the
stream, is OpenAI's and reused from ``openai.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

from servegate.providers.base import UpstreamRequest
from servegate.providers.openai import TASK_PATHS, OpenAIFormatProvider
from servegate.spec import ExternalModel, OpenAIApiType, Task
from servegate.transport.credentials import CredentialRegistry, EntraTokenSource


class AzureOpenAIProvider(OpenAIFormatProvider):
    name = "openai"
    sends_model = False
    unsupported_params = frozenset({"top_k"})

    def __init__(
        self, model: ExternalModel, secrets: Mapping[str, str], credentials: CredentialRegistry
    ) -> None:
        super().__init__(model, secrets)
        config = model.openai_config
        if config is None or not config.openai_api_base or not config.openai_deployment_name:
            raise ValueError("Azure OpenAI needs openai_api_base and openai_deployment_name")
        base = config.openai_api_base.rstrip("/")
        deployment = quote(config.openai_deployment_name, safe="")
        self._url_prefix = f"{base}/openai/deployments/{deployment}"
        self._query = f"?api-version={quote(config.openai_api_version or '', safe='')}"
        self._token_source: EntraTokenSource | None = None
        self._headers: dict[str, str] = {}
        if config.openai_api_type == OpenAIApiType.AZUREAD:
            self._token_source = credentials.entra(
                tenant_id=config.microsoft_entra_tenant_id or "",
                client_id=config.microsoft_entra_client_id or "",
                client_secret=secrets["microsoft_entra_client_secret"],
            )
        else:
            self._headers["api-key"] = secrets["openai_api_key"]

    def upstream_url(self, task: Task) -> str:
        return self._url_prefix + TASK_PATHS[task] + self._query

    def auth_headers(self) -> Mapping[str, str]:
        return self._headers

    def live_secrets(self) -> tuple[str, ...]:
        return self._token_source.recent_tokens() if self._token_source is not None else ()

    async def authorize(self, request: UpstreamRequest) -> UpstreamRequest:
        if self._token_source is None:
            return request
        token = await self._token_source.token()
        return request.with_headers({"Authorization": f"Bearer {token}"})
