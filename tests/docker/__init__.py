"""The container image, checked without a Docker engine: the Dockerfile, .dockerignore, the lock."""
