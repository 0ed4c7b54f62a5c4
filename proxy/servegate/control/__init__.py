"""The control plane: create, update and delete endpoints through the platform's REST API.

``bodies`` turns the platform's request bodies into ServingEndpoint specs (pure),
``plaintext`` moves literal credentials out of a spec before anything stores it, ``store``
is what a place to keep endpoints must do, ``statedir`` keeps them as manifests
(``servegate serve --state-dir``) and ``kubestore`` as ServingEndpoint resources
(``--control-plane kubernetes``), and ``pending`` tells whether the gateway serves a
stored version yet. The routes are in ``ingress/control.py``.
"""
