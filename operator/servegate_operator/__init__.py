"""The servegate Kubernetes operator (kopf); it imports the gateway's spec model, never the reverse."""

__version__ = "0.1.0"
