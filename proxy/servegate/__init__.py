"""servegate: one governed endpoint in front of third-party LLM providers.

The gateway speaks the Databricks serving-endpoint API and the OpenAI API, and reads
`ServingEndpoint` manifests: the same documents the Kubernetes operator reconciles.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
