"""Pure renderers: a validated spec in, the desired Kubernetes objects (plain dicts) out."""
