"""An in-memory Kubernetes API for tests: see :mod:`tests.k8s.emulator`."""
