"""The control plane: create, update and delete endpoints through the platform's REST API.

``bodies`` turns the platform's request bodies into ServingEndpoint specs (pure),
``plaintext`` moves literal credentials out of a spec before anything stores it, and
``statedir`` stores API-created endpoints as manifests (``servegate serve --state-dir``).
The routes are in ``ingress/control.py``.
"""
