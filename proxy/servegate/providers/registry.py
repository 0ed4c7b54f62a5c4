"""Provider name → translator class: the only place where spec names meet classes."""

from __future__ import annotations

from collections.abc import Mapping

from servegate.providers.azure_openai import AzureOpenAIProvider
from servegate.providers.base import Provider
from servegate.providers.custom import CustomProvider
from servegate.providers.databricks import DatabricksServingProvider
from servegate.providers.openai import OpenAIProvider
from servegate.spec.endpoint import ExternalModel
from servegate.spec.endpoint import Provider as ProviderName
from servegate.transport.credentials import CredentialRegistry


class UnsupportedProvider(ValueError):
    """The spec names a provider this build of the gateway cannot serve."""


def build_provider(
    model: ExternalModel, secrets: Mapping[str, str], credentials: CredentialRegistry
) -> Provider:
    """The translator for one served entity; ``secrets`` maps credential field → value."""
    match model.provider:
        case ProviderName.OPENAI:
            api_type = (model.openai_config.openai_api_type if model.openai_config else None) or ""
            if api_type.lower() in ("azure", "azuread"):
                return AzureOpenAIProvider(model, secrets, credentials)
            return OpenAIProvider(model, secrets)
        case ProviderName.CUSTOM:
            return CustomProvider(model, secrets)
        case ProviderName.DATABRICKS_MODEL_SERVING:
            return DatabricksServingProvider(model, secrets)
        case _:
            raise UnsupportedProvider(
                f"provider '{model.provider}' is not available in this servegate version"
            )
