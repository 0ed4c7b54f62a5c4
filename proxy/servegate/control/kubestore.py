"""API-created endpoints as ServingEndpoint custom resources (``--control-plane kubernetes``).

In a cluster the REST API writes what ``kubectl apply`` would: a ServingEndpoint in the
gateway's namespace. The operator reconciles it as any other (validates, renders its
ConfigMap, rolls the gateway out), and the gateway loads the new config when kubelet
refreshes the mount. The API server is the only state: every replica reads it, so any
replica can answer a write or a GET.

**Credentials.** A body's ``*_plaintext`` values never reach the resource: they go to a
Secret named after the endpoint's scope (``<name>-credentials``, which the operator's rule,
lowercase and ``_`` → ``-``, maps to itself), owned by the ServingEndpoint through an
ownerReference, so garbage collection deletes it with the endpoint. The resource holds
``{{secrets/<name>-credentials/<entity>.<field>}}`` references only. The order of a create
is what keeps both promises, *no plaintext in the resource* and *no orphan Secret*:

1. create the resource (references only); the API server gives it its ``uid``;
2. create the Secret with an ownerReference to that ``uid``. If this fails, delete the
   resource again (precondition: that ``uid``), so a failed create leaves nothing;
3. annotate the resource (:data:`CREDENTIALS_ANNOTATION`), so the operator reconciles it
   once more now that the Secret exists, instead of at its next periodic pass.

A crash between 1 and 2 leaves a resource whose Secret is missing (``SecretsResolved:
False``, the endpoint NOT_READY), never a credential without an owner; a ``PUT …/config``
with the keys repairs it. The reverse order (Secret first, owner patched in afterwards)
would leave an ownerless Secret holding a credential on the same crash.

An update writes the Secret first (new keys added, existing ones kept: the resource still
refers to them), then replaces the resource, then drops the keys nobody refers to any
more; if replacing fails, the Secret's previous data is put back. A Secret of that name
the endpoint does not own (someone else's, or a deleted endpoint's awaiting garbage
collection) is never overwritten: the write is refused with 409 instead.

**Rights.** The caller is authorized by the gateway's auth first (a SubjectAccessReview
for ``create``, ``update`` or ``delete`` on that ``servingendpoints`` name); only then does
the gateway write, with its own ServiceAccount, and only that resource and its own Secret.
What the ServiceAccount needs in its namespace is :data:`REQUIRED_RULES`.

**Concurrency.** Updates carry the ``resourceVersion`` they were computed from, so two
concurrent writers cannot overwrite each other: the second gets 409 ``RESOURCE_CONFLICT``.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from servegate.auth.callers import AuthHolder
from servegate.auth.kube import KubernetesAuthenticator
from servegate.auth.kubeapi import ApiAnswer, ApiUnavailable, KubernetesApi
from servegate.control.pending import served_digest
from servegate.control.plaintext import Extracted, referenced_keys
from servegate.control.store import (
    AlreadyExists,
    Conflict,
    ControlPlaneConfigError,
    Stored,
    StoreUnavailable,
    first_history,
    next_history,
)
from servegate.ingress.errors import GatewayError, InvalidParameter, NotFound
from servegate.spec import ServingEndpointSpec, redacted_dump
from servegate.spec.manifest import API_GROUP, API_VERSION, CREATED_MS, KIND, UPDATED_MS
from servegate.spec.secrets import SecretRef

log = logging.getLogger("servegate.control")

PLURAL: Final = "servingendpoints"
CREDENTIALS_ANNOTATION: Final = "gateway.servegate.io/credentials"
"""The ``resourceVersion`` of the endpoint's Secret as last written. Changing it is what
makes the operator reconcile again once the Secret exists. It is deliberately *not* under
``servegate.io/``: kopf keeps its own bookkeeping there (``servegate.io/kopf-managed``), and
so ignores every annotation of that prefix when it decides whether an object changed."""

REQUIRED_RULES: Final[tuple[tuple[str, str, tuple[str, ...]], ...]] = (
    (API_GROUP, PLURAL, ("get", "create", "update", "patch", "delete")),
    ("", "secrets", ("get", "create", "update", "delete")),
)
"""(apiGroup, resource, verbs) the gateway's ServiceAccount needs in its own namespace for
``--control-plane kubernetes``: a Role, bound to it. No list or watch."""

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_OPERATOR_PLAINTEXT_PREFIX = "servegate-ep-"


def secret_name_for_scope(scope: str) -> str:
    """The operator's scope → Secret rule (``servegate_operator.naming``): lowercase, and
    ``_`` becomes ``-``; ValueError when the result is no valid Secret name. Repeated here
    because the gateway does not depend on the operator; a test keeps the two equal."""
    name = scope.lower().replace("_", "-")
    if len(name) > 253 or not all(_DNS_LABEL.fullmatch(part) for part in name.split(".")):
        raise ValueError(
            f"secret scope '{scope}' does not map to a valid Secret name ('{name}'): "
            "use lowercase letters, digits, '-', '_' and '.'"
        )
    return name


def check_resource_name(name: str) -> None:
    """An endpoint name that can name a ServingEndpoint (an RFC 1123 label: the platform
    allows capitals and '_', Kubernetes object names do not)."""
    if not _DNS_LABEL.fullmatch(name):
        raise InvalidParameter(
            f"name: '{name}' cannot name a ServingEndpoint in Kubernetes: use lowercase "
            "letters, digits and '-', starting and ending with a letter or a digit."
        )


def kubernetes_store(auth: AuthHolder) -> KubernetesStore:
    """The store of a gateway with ``--auth kubernetes``: its API connection (session,
    credentials, timeouts) and its namespace, shared with the SubjectAccessReviews."""
    current = auth.current
    if not isinstance(current, KubernetesAuthenticator):
        raise ControlPlaneConfigError(
            "--control-plane kubernetes needs --auth kubernetes: writes are authorized "
            "with SubjectAccessReviews and stored through the same API server"
        )
    return KubernetesStore(current.api, current.namespace)


class KubernetesStore:
    reload_after_write = False
    authoritative = True
    """The namespace's ServingEndpoints are the gateway's endpoints: one that is not there
    does not exist, even while a lagging replica still serves it."""

    def __init__(self, api: KubernetesApi, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self._resources = f"/apis/{API_GROUP}/{API_VERSION.split('/')[1]}/namespaces/{namespace}"
        self._resources += f"/{PLURAL}"
        self._secrets = f"/api/v1/namespaces/{namespace}/secrets"

    # ------------------------------------------------------------------ reads

    async def manages(self, name: str) -> bool:
        return await self.read(name) is not None

    async def read(self, name: str) -> Stored | None:
        if not _DNS_LABEL.fullmatch(name):
            return None  # no ServingEndpoint can have this name
        answer = await self._call("GET", f"{self._resources}/{name}", f"read endpoint '{name}'")
        if answer.status == 404:
            return None
        obj = self._object(answer, f"read endpoint '{name}'")
        if obj["metadata"].get("deletionTimestamp"):
            return None  # being deleted: gone, as far as the API is concerned
        return _stored(obj)

    # ------------------------------------------------------------------ writes

    async def create(self, name: str, extracted: Extracted, creator: str) -> Stored:
        check_resource_name(name)
        secret_name = _secret_name(extracted)
        _check_keys(extracted.secrets)
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "annotations": first_history(creator),
            },
            "spec": extracted.spec,
        }
        what = f"create endpoint '{name}'"
        answer = await self._call("POST", self._resources, what, body)
        if answer.status == 409:
            raise AlreadyExists(f"Endpoint with name '{name}' already exists.")
        if answer.status == 404:  # the namespace or the CRD is missing: not the caller's fault
            log.error("cannot %s: the API server answered 404: %s", what, answer.message)
            raise StoreUnavailable(
                f"Cannot {what}: namespace '{self.namespace}' or the ServingEndpoint "
                "CustomResourceDefinition is missing.",
                retry_after=None,
            )
        created = self._object(answer, what)
        if not extracted.secrets:
            return _stored(created)
        try:
            secret = await self._create_secret(created, secret_name, extracted.secrets)
        except BaseException:
            await self._undo_create(created, secret_name)
            raise
        return _stored(await self._mark_credentials(created, secret))

    async def replace(self, current: Stored, extracted: Extracted) -> Stored:
        name = current.name
        secret_name = _secret_name(extracted)
        _check_keys(extracted.secrets)
        obj = current.raw
        if not isinstance(obj, Mapping):
            raise TypeError("replace() needs a Stored read by this store")
        old_keys = referenced_keys(current.spec, extracted.scope)
        secret: dict[str, Any] | None = None
        before: dict[str, Any] | None = None  # the endpoint's Secret before this write
        if extracted.secrets or old_keys:
            before = await self._read_secret(name, secret_name)
            if before is not None and not _owned_by(before, obj):
                if extracted.secrets:
                    raise self._foreign_secret(name, secret_name)
                before = None  # someone else's Secret the spec refers to: never touched
        if extracted.secrets:
            secret = await self._put_secret_keys(obj, secret_name, before, extracted.secrets)
        try:
            replaced = await self._replace_resource(obj, extracted.spec, secret)
        except BaseException:
            if secret is not None:
                await self._restore_secret(name, secret_name, before, secret)
            raise
        await self._prune_secret(name, secret_name, secret or before, extracted)
        return _stored(replaced)

    async def delete(self, name: str) -> None:
        if not _DNS_LABEL.fullmatch(name):
            raise NotFound(f"Endpoint with name '{name}' not found.")
        what = f"delete endpoint '{name}'"
        options = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        answer = await self._call("DELETE", f"{self._resources}/{name}", what, options)
        if answer.status == 404:
            raise NotFound(f"Endpoint with name '{name}' not found.")
        if not answer.ok:  # the answer to a delete may be the object or a Status: either
            self._object(answer, what)
        # Its Secret goes by garbage collection, as its ConfigMap does.

    # ------------------------------------------------------------------ the resource

    async def _replace_resource(
        self, obj: Mapping[str, Any], spec: dict[str, Any], secret: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """PUT the resource with the new spec, at the resourceVersion it was read with."""
        name = obj["metadata"]["name"]
        metadata = {k: v for k, v in obj["metadata"].items() if k != "managedFields"}
        annotations = next_history(
            metadata.get("annotations") or {}, changed=obj.get("spec") != spec
        )
        if secret is not None:
            annotations[CREDENTIALS_ANNOTATION] = secret["metadata"]["resourceVersion"]
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {**metadata, "annotations": annotations},
            "spec": spec,
        }
        what = f"update endpoint '{name}'"
        answer = await self._call("PUT", f"{self._resources}/{name}", what, body)
        if answer.status == 409:
            raise Conflict(
                f"Endpoint '{name}' was changed by another write meanwhile; read it and try again."
            )
        if answer.status == 404:
            raise NotFound(f"Endpoint with name '{name}' not found.")
        return self._object(answer, what)

    async def _mark_credentials(
        self, created: dict[str, Any], secret: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Annotate a new resource with its Secret's version: the operator reconciles it
        once more and finds the Secret (a failure only delays that to its periodic pass)."""
        name = created["metadata"]["name"]
        patch = {
            "metadata": {
                "annotations": {CREDENTIALS_ANNOTATION: secret["metadata"]["resourceVersion"]}
            }
        }
        try:
            answer = await self.api.request(
                "PATCH",
                f"{self._resources}/{name}",
                patch,
                content_type="application/merge-patch+json",
            )
        except ApiUnavailable as exc:
            log.warning("endpoint '%s': cannot annotate it after storing its keys: %s", name, exc)
            return created
        if not answer.ok or answer.body is None:
            log.warning(
                "endpoint '%s': cannot annotate it after storing its keys (%d: %s); the "
                "operator will notice them at its next periodic reconcile",
                name,
                answer.status,
                answer.message,
            )
            return created
        return answer.body

    async def _undo_create(self, created: Mapping[str, Any], secret_name: str) -> None:
        """Delete a resource whose Secret could not be written (only that very object)."""
        meta = created["metadata"]
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
            "preconditions": {"uid": meta["uid"]},
        }
        try:
            answer = await self.api.request("DELETE", f"{self._resources}/{meta['name']}", options)
            if answer.ok or answer.status == 404:
                return
            problem = f"{answer.status}: {answer.message}"
        except ApiUnavailable as exc:
            problem = str(exc)
        log.error(
            "endpoint '%s' was created but its Secret '%s' could not be, and removing the "
            "endpoint failed too (%s): it refers to keys that do not exist (NOT_READY). "
            "Delete it, or PUT its config again with the keys.",
            meta["name"],
            secret_name,
            problem,
        )

    # ------------------------------------------------------------------ the Secret

    async def _create_secret(
        self, owner: Mapping[str, Any], secret_name: str, values: Mapping[str, str]
    ) -> dict[str, Any]:
        name = owner["metadata"]["name"]
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": secret_name,
                "namespace": self.namespace,
                "labels": {
                    "app.kubernetes.io/managed-by": "servegate-gateway",
                    "servegate.io/endpoint": name,
                },
                "ownerReferences": [_owner_reference(owner)],
            },
            "data": _encode(values),
        }
        what = f"store the keys of endpoint '{name}'"
        answer = await self._call("POST", self._secrets, what, body)
        if answer.status == 409:
            raise self._foreign_secret(name, secret_name)
        return self._object(answer, what)

    async def _read_secret(self, endpoint: str, secret_name: str) -> dict[str, Any] | None:
        what = f"read the keys of endpoint '{endpoint}'"
        answer = await self._call("GET", f"{self._secrets}/{secret_name}", what)
        if answer.status == 404:
            return None
        return self._object(answer, what)

    async def _put_secret_keys(
        self,
        owner: Mapping[str, Any],
        secret_name: str,
        before: Mapping[str, Any] | None,
        values: Mapping[str, str],
    ) -> dict[str, Any]:
        """Add or replace keys, keeping the others (the resource still refers to them)."""
        if before is None:
            return await self._create_secret(owner, secret_name, values)
        return await self._write_secret(
            owner["metadata"]["name"], before, {**(before.get("data") or {}), **_encode(values)}
        )

    async def _write_secret(
        self, endpoint: str, current: Mapping[str, Any], data: dict[str, str]
    ) -> dict[str, Any]:
        """PUT the Secret with new data, at the resourceVersion it was read with."""
        secret_name = current["metadata"]["name"]
        body = {**current, "data": data}
        body["metadata"] = {k: v for k, v in current["metadata"].items() if k != "managedFields"}
        body.pop("stringData", None)
        what = f"store the keys of endpoint '{endpoint}'"
        answer = await self._call("PUT", f"{self._secrets}/{secret_name}", what, body)
        if answer.status == 409:
            raise Conflict(
                f"The keys of endpoint '{endpoint}' were changed by another write meanwhile; "
                "try again."
            )
        if answer.status == 404:
            raise Conflict(f"Secret '{secret_name}' was deleted meanwhile; try again.")
        return self._object(answer, what)

    async def _restore_secret(
        self,
        endpoint: str,
        secret_name: str,
        before: Mapping[str, Any] | None,
        written: Mapping[str, Any],
    ) -> None:
        """Undo a Secret write whose resource update failed (best effort, logged)."""
        try:
            if before is None:
                options = {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "preconditions": {"uid": written["metadata"]["uid"]},
                }
                answer = await self.api.request("DELETE", f"{self._secrets}/{secret_name}", options)
                if answer.ok or answer.status == 404:
                    return
                problem = f"{answer.status}: {answer.message}"
            else:
                await self._write_secret(endpoint, written, dict(before.get("data") or {}))
                return
        except (ApiUnavailable, GatewayError) as exc:
            problem = str(exc)
        log.warning(
            "endpoint '%s': its update failed, and its Secret '%s' could not be put back as "
            "it was (%s); it holds keys the endpoint does not use until the next update",
            endpoint,
            secret_name,
            problem,
        )

    async def _prune_secret(
        self,
        endpoint: str,
        secret_name: str,
        secret: Mapping[str, Any] | None,
        extracted: Extracted,
    ) -> None:
        """Drop the keys the new spec no longer refers to; the whole Secret when none is
        left. Best effort: a Secret with extra keys is still owned, never orphaned."""
        if secret is None:
            return
        data = dict(secret.get("data") or {})
        keep = extracted.referenced_keys()
        kept = {key: value for key, value in data.items() if key in keep}
        if kept == data:
            return
        try:
            if kept:
                await self._write_secret(endpoint, secret, kept)
                return
            options = {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "preconditions": {
                    "uid": secret["metadata"]["uid"],
                    "resourceVersion": secret["metadata"]["resourceVersion"],
                },
            }
            answer = await self.api.request("DELETE", f"{self._secrets}/{secret_name}", options)
            if answer.ok or answer.status == 404:
                return
            problem = f"{answer.status}: {answer.message}"
        except (ApiUnavailable, GatewayError) as exc:
            problem = str(exc)
        log.warning(
            "endpoint '%s': cannot drop the keys it no longer uses from Secret '%s' (%s)",
            endpoint,
            secret_name,
            problem,
        )

    def _foreign_secret(self, endpoint: str, secret_name: str) -> Conflict:
        return Conflict(
            f"Secret '{secret_name}' exists in namespace '{self.namespace}' and does not belong "
            f"to endpoint '{endpoint}'; the endpoint's plaintext keys go there. Delete or "
            "rename that Secret (if the endpoint was just deleted, its old Secret is being "
            "garbage-collected: try again shortly), or send {{secrets/<scope>/<key>}} "
            "references instead of plaintext keys."
        )

    # ------------------------------------------------------------------ plumbing

    async def _call(
        self, method: str, path: str, what: str, body: Mapping[str, Any] | None = None
    ) -> ApiAnswer:
        try:
            return await self.api.request(method, path, body)
        except ApiUnavailable as exc:
            log.warning("cannot %s: %s", what, exc)
            raise StoreUnavailable(
                f"Cannot {what}: the Kubernetes API server is unavailable. Try again shortly."
            ) from None

    def _object(self, answer: ApiAnswer, what: str) -> dict[str, Any]:
        """The object of a successful answer; the platform's error for anything else."""
        if answer.ok and answer.body is not None and isinstance(answer.body.get("metadata"), dict):
            return answer.body
        if answer.status in (400, 422):
            raise InvalidParameter(f"Invalid endpoint: {answer.message}")
        raise self._unavailable(what, answer)

    def _unavailable(self, what: str, answer: ApiAnswer) -> StoreUnavailable:
        if answer.status in (401, 403):
            log.error(
                "cannot %s: the API server refused the gateway (%d: %s)",
                what,
                answer.status,
                answer.message,
            )
            rules = "; ".join(
                f"{', '.join(verbs)} on {resource}{'.' + group if group else ''}"
                for group, resource, verbs in REQUIRED_RULES
            )
            return StoreUnavailable(
                f"Cannot {what}: the Kubernetes API server refused the gateway. Its "
                f"ServiceAccount needs a Role in namespace '{self.namespace}' granting {rules}.",
                retry_after=None,
            )
        log.warning(
            "cannot %s: the API server answered %d: %s", what, answer.status, answer.message
        )
        return StoreUnavailable(
            f"Cannot {what}: the Kubernetes API server answered {answer.status}. Try again shortly."
        )


# ---------------------------------------------------------------------- helpers


def _stored(obj: dict[str, Any]) -> Stored:
    meta = obj["metadata"]
    name = str(meta["name"])
    spec = obj.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    annotations = meta.get("annotations") or {}
    created = _int(annotations.get(CREATED_MS), _timestamp_ms(meta.get("creationTimestamp")))
    return Stored(
        name=name,
        spec=spec,
        changed_ms=_int(annotations.get(UPDATED_MS), created),
        created_ms=created,
        revision=str(meta.get("resourceVersion") or ""),
        serves_as=operator_rendered_digest(name, spec),
        rejected=_rejected(obj),
        uid=str(meta.get("uid") or ""),
        raw=obj,
    )


def operator_rendered_digest(name: str, spec: Mapping[str, Any]) -> str | None:
    """The digest the gateway will have for this resource once the operator has rendered
    it: its spec with each ``*_plaintext`` credential replaced by a reference into the
    operator's own Secret (``render/config.py``), as the operator writes the ConfigMap.
    Resources the API wrote have no plaintext, so this is their spec's digest; resources
    applied with plaintext must compare equal to what the operator made of them, or they
    would look IN_PROGRESS forever. A test keeps this equal to the operator's render."""
    try:
        model = ServingEndpointSpec.model_validate(dict(spec))
    except ValueError:
        return None
    document = redacted_dump(model)
    entities = {entity["name"]: entity for entity in document["config"]["served_entities"]}
    scope = f"{_OPERATOR_PLAINTEXT_PREFIX}{name}-plaintext"
    for entity_name, credential in model.credentials():
        if credential.plaintext is None:
            continue
        reference = str(SecretRef(scope, f"{entity_name}.{credential.field}"))
        external = entities[entity_name]["external_model"]
        target = next(
            v for k, v in external.items() if k.endswith("_config") and isinstance(v, dict)
        )
        *parents, leaf = credential.field.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = reference
    return served_digest(document)


def _rejected(obj: Mapping[str, Any]) -> str | None:
    """The operator's refusal of the current generation (``ConfigValid: False``), if any."""
    status = obj.get("status") or {}
    generation = obj["metadata"].get("generation")
    if generation is None or status.get("observedGeneration") != generation:
        return None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "ConfigValid" and condition.get("status") == "False":
            return str(condition.get("message") or condition.get("reason") or "invalid config")
    return None


def _owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """Owned by the endpoint: garbage-collected with it. No ``blockOwnerDeletion``, which
    would need update rights on ``servingendpoints/finalizers`` for nothing (deleting the
    endpoint need not wait for its Secret)."""
    meta = owner["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
    }


def _owned_by(secret: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    uid = owner["metadata"]["uid"]
    return any(ref.get("uid") == uid for ref in secret["metadata"].get("ownerReferences") or [])


def _secret_name(extracted: Extracted) -> str:
    try:
        return secret_name_for_scope(extracted.scope)
    except ValueError as exc:
        raise InvalidParameter(f"name: {exc}") from None


def _check_keys(values: Mapping[str, str]) -> None:
    """Every key a valid Secret data key (the names come from served-entity names)."""
    for key in values:
        if len(key) > 253 or not _SECRET_KEY.fullmatch(key) or key in (".", ".."):
            entity = key.split(".", 1)[0]
            raise InvalidParameter(
                f"config.served_entities: the key of entity '{entity[:80]}' cannot be stored "
                "in a Secret (at most 253 letters, digits, '-', '_' and '.'): shorten the "
                "entity name, or send {{secrets/<scope>/<key>}} references."
            )


def _encode(values: Mapping[str, str]) -> dict[str, str]:
    return {key: base64.b64encode(value.encode()).decode() for key, value in values.items()}


def _int(value: object, default: int) -> int:
    try:
        return int(str(value))
    except ValueError:
        return default


def _timestamp_ms(value: object) -> int:
    if not isinstance(value, str):
        return 0
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return 0
