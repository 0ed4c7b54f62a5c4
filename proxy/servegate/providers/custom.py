"""Any OpenAI-compatible server (vLLM, TGI, llama.cpp, LM Studio, an internal proxy).

``custom_provider_url`` is the server's OpenAI base URL (``https://host/v1``); the task's
path (``/chat/completions``, ``/completions``, ``/embeddings``) is appended. A URL that
already ends in that path is used as given. Auth is an API-key header
(``api_key_auth: {key, value}``) or a bearer token (``bearer_token_auth``). Unknown
parameters such as ``top_k`` pass through: such servers commonly accept them.
"""

from __future__ import annotations

from collections.abc import Mapping

from servegate.providers.openai import TASK_PATHS, OpenAIFormatProvider
from servegate.spec.endpoint import ExternalModel, Task


class CustomProvider(OpenAIFormatProvider):
    name = "custom"

    def __init__(self, model: ExternalModel, secrets: Mapping[str, str]) -> None:
        super().__init__(model, secrets)
        config = model.custom_provider_config
        if config is None:
            raise ValueError("provider 'custom' needs custom_provider_config")
        self._url = config.custom_provider_url.rstrip("/")
        if config.api_key_auth is not None:
            self._headers = {config.api_key_auth.key: secrets["api_key_auth.value"]}
        else:
            self._headers = {"Authorization": f"Bearer {secrets['bearer_token_auth.token']}"}

    def upstream_url(self, task: Task) -> str:
        path = TASK_PATHS[task]
        return self._url if self._url.endswith(path) else self._url + path

    def auth_headers(self) -> Mapping[str, str]:
        return self._headers
