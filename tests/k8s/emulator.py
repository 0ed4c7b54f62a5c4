"""An in-memory Kubernetes API server for tests, built on ``kmock.KubernetesEmulator``.

kmock 0.8 gives an HTTP server with stateful storage, watch buses, a request log and a
reaction DSL for fault injection, but kubectl, kopf and the ``kubernetes`` client cannot use
its ``KubernetesEmulator`` as it is (/work/shared/reference/kubernetes-testing.md).
:class:`ServegateKubernetes` keeps kmock's storage (``emu.objects[res, ns, name]`` with the
history of versions), request log (``emu.requests``), discovery routes and reactions, and
replaces the URL parsing and the object semantics. :func:`running_kubernetes` runs it.

What kmock 0.8 does → what breaks → what is done here:

=============================  ==============================  ===================================
kmock 0.8                      breaks                          here
=============================  ==============================  ===================================
lists have no ``kind``         kubectl: "Object 'Kind' is      ``<Kind>List``, ``apiVersion``,
                               missing"                        ``metadata.resourceVersion``;
                                                               ``limit``/``continue`` paging
core group is ``/v1`` in       kubectl finds no ConfigMaps,    ``/api`` → ``versions: [v1]``,
discovery                      Secrets, Services               ``/api/v1`` → ``groupVersion: v1``
``/api/v1/namespaces`` parsed  kopf retries forever; kubectl   own URL parser: ``namespaces[/N
as a namespace prefix          cannot get namespaces           [/status|/finalize]]`` is the
(raises)                                                       Namespace resource
no ``/openapi/v3``             kubectl apply/create: "failed   stub v3 documents: every PATCH
                               to download openapi"            takes ``fieldValidation``, so
                                                               kubectl leaves validation to the
                                                               server (none here)
no uid, resourceVersion,       ``kopf.adopt()`` fails; no      assigned by the server; the RV is
creationTimestamp,             optimistic concurrency;         a global counter, bumped by every
generation                     observedGeneration is void      effective write; ``generation``
                                                               moves when anything but metadata
                                                               (and status, with a status
                                                               subresource) changes, and on
                                                               graceful deletion
every PATCH is a dict merge;   strategic/JSON patches,         by Content-Type: merge (RFC 7386),
PUT is unsupported             replace and optimistic          JSON (RFC 6902, 422 on a failed
                               locking are wrong               ``test``), strategic (below); PUT
                                                               replaces; 409 on a stale RV in a
                                                               PUT, a patch or delete
                                                               preconditions
``?watch=True`` is a list      the client's watches break      ``watch`` in any case, and the
                                                               legacy ``/watch/`` paths
watch streams are              kubectl rejects them            chunked ``application/json``
``application/octet-stream``                                   lines
watches ignore                 resuming from a list's RV       an event log: from RV N, every
``resourceVersion`` and        loses events; streams never     event after N; without an RV (or
``timeoutSeconds``             end                             "0") the objects as ADDED first;
                                                               ``timeoutSeconds`` ends it;
                                                               ``sendInitialEvents`` ends with
                                                               the initial-events-end BOOKMARK
creates answer 200             the client expects 201          201 (also when apply creates)
no status subresource          status is written through the   with ``status``: the main endpoint
semantics                      main endpoint                   keeps the old status, ``/status``
                                                               changes only status; create drops
                                                               it
no label/field selectors       kopf, ``kubectl -l``,           ``labelSelector`` (=, ==, !=, in,
                               ``--field-selector`` and        notin, exists, !exists);
                               ``delete --wait`` break         ``fieldSelector`` (=, ==, != on any
                                                               dotted path); on list and watch,
                                                               with ADDED/DELETED when an object
                                                               starts/stops matching
finalizers, but no garbage     owned objects are never         no new finalizers while deleting
collection                     cleaned up                      (422); ownerReference GC
                                                               (background; ``Orphan`` strips the
                                                               refs); namespace deletion deletes
                                                               the content (Terminating until
                                                               then)
no server-side apply           the operator's writes fail      create-or-merge (strategic); each
                                                               field manager's last applied
                                                               config is kept, so what a manager
                                                               stops applying is removed
``generateName`` ignored       kopf cannot post Events         a random 5-character suffix
errors are generic 500s        clients misread them; kmock     ``Status`` bodies with the real
(and kmock records 404s as     counts them as failures         codes/reasons: 400 BadRequest, 404
server errors)                                                 NotFound, 409 AlreadyExists/
                                                               Conflict, 415 (protobuf, CBOR,
                                                               strategic patch of a custom
                                                               resource), 422 Invalid
CRDs are plain objects         applying a CRD serves nothing   a CRD registers its resource and
                                                               is Established at once; deleting
                                                               it deletes its objects
``apps.Server`` patches        unsafe with kopf's aiohttp in   a plain aiohttp runner on
aiohttp's resolver             other threads                   127.0.0.1:0 in its own thread
process-wide
=============================  ==============================  ===================================

Also as in a cluster: ``dryRun=All``; Secrets' ``stringData`` folded into ``data``; Namespaces
get ``status.phase`` and ``spec.finalizers: [kubernetes]``; namespaced objects need their
Namespace (404 otherwise; ``default``, ``kube-system``, ``kube-public``, ``kube-node-lease``
exist); a write that changes nothing is a no-op (no new RV, no event).

Strategic merge patch (and apply) supports: lists of maps merged by key for the fields named
``containers``, ``initContainers``, ``ephemeralContainers``, ``volumes``, ``env``,
``imagePullSecrets``, ``resourceClaims`` (by ``name``), ``volumeMounts`` (``mountPath``),
``volumeDevices`` (``devicePath``), ``ports`` (``containerPort`` if the items have it, else
``port``), ``ownerReferences`` (``uid``), ``conditions`` (``type``), ``hostAliases``
(``ip``); ``finalizers`` merged as a set; other lists replaced; ``null`` deletes a key;
directives ``$patch: replace|delete`` (maps and list items), ``$retainKeys``,
``$deleteFromPrimitiveList/<field>``, ``$setElementOrder/<field>``. Merge keys go by field
name, not by each type's schema.

Not emulated (do not assert on it): Pods, ReplicaSets, Endpoints or any controller (write a
Deployment's status yourself); defaulting and validation of built-in kinds and of CRD schemas
(no schemas at all: ``kubectl explain`` fails); admission; authentication and RBAC unless
``ReviewAuthority.enforce()`` (tests/k8s/reviews.py) turns them on; ``managedFields`` and
SSA ownership conflicts (apply never answers 409, and fields written by PATCH/PUT are owned
by no one); Foreground deletion (treated as Background); GC timing (it
runs inside the request that removed the owner); CRD deletion does not wait for its objects'
finalizers; server-side Tables (kubectl prints NAME/AGE); ``v1`` and ``events.k8s.io/v1``
Events are separate stores; protobuf and CBOR bodies (``kubectl create secret|configmap|
namespace`` generators: use ``apply -f``); the ``scale`` (``kubectl scale``), ``eviction``,
``token``, ``log``, ``exec`` subresources; ``kubectl auth can-i``; watch bookmarks other than
the initial-events-end one; ``410 Gone`` (every event is kept).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import copy
import datetime
import functools
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import threading
import traceback
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import aiohttp.web
import attrs
import jsonpatch
import kmock
import kubernetes.client
import yaml
from kmock._internal import k8s as kmock_k8s
from kmock._internal import rendering as kmock_rendering

JSON = dict[str, Any]
T = TypeVar("T")
ObjectKey = tuple[kmock.resource, str | None, str]
RbacCall = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)

ALL_VERBS: Final = frozenset(
    {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
)
SUBRESOURCE_VERBS: Final = ("get", "patch", "update")
TOKEN: Final = "servegate-emulator-token"
KUBECTL: Final = shutil.which("kubectl") or "/usr/bin/kubectl"

NAMESPACES: Final = kmock.resource("", "v1", "namespaces")
SECRETS: Final = kmock.resource("", "v1", "secrets")
CRDS: Final = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
SERVING_ENDPOINTS: Final = kmock.resource("servegate.io", "v1alpha1", "servingendpoints")
DEFAULT_NAMESPACES: Final = ("default", "kube-system", "kube-public", "kube-node-lease")

CT_JSON: Final = "application/json"
CT_MERGE: Final = "application/merge-patch+json"
CT_STRATEGIC: Final = "application/strategic-merge-patch+json"
CT_JSON_PATCH: Final = "application/json-patch+json"
CT_APPLY: Final = "application/apply-patch+yaml"
UNSUPPORTED_BODIES: Final = frozenset(
    {"application/vnd.kubernetes.protobuf", "application/apply-patch+cbor", "application/cbor"}
)
NAMESPACE_SUBRESOURCES: Final = frozenset({"status", "finalize"})
GENERATE_NAME_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"


# --------------------------------------------------------------------------- errors


def api_error(code: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    """A Kubernetes ``Status`` failure, rendered with this HTTP code."""
    return kmock.KubernetesError(
        status=code, reason=reason, message=message, details=details or None
    )


def _qualified(res: kmock.resource) -> str:
    return f"{res.plural}.{res.group}" if res.group else f"{res.plural}"


def _not_found(res: kmock.resource, name: str) -> kmock.KubernetesError:
    return api_error(
        404,
        "NotFound",
        f'{_qualified(res)} "{name}" not found',
        name=name,
        group=res.group,
        kind=res.plural,
    )


def _conflict(res: kmock.resource, name: str) -> kmock.KubernetesError:
    return api_error(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(res)} "{name}": the object has been'
        " modified; please apply your changes to the latest version and try again",
        name=name,
        group=res.group,
        kind=res.plural,
    )


def _invalid(res: kmock.resource, name: str, message: str) -> kmock.KubernetesError:
    return api_error(
        422,
        "Invalid",
        f'{_qualified(res)} "{name}" is invalid: {message}',
        name=name,
        group=res.group,
        kind=res.plural,
    )


def _no_such_resource() -> kmock.KubernetesError:
    return api_error(404, "NotFound", "the server could not find the requested resource")


def _bad_request(message: str) -> kmock.KubernetesError:
    return api_error(400, "BadRequest", message)


def _status_body(code: int, reason: str | None, message: str | None, details: Any) -> JSON:
    body: JSON = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message or "",
        "reason": reason or "",
        "code": code,
    }
    if details:
        body["details"] = details
    return body


# --------------------------------------------------------------------------- URLs


@dataclass(frozen=True)
class ApiPath:
    """A parsed ``/api/...`` or ``/apis/...`` URL path (``group is None`` for anything else)."""

    group: str | None = None
    version: str | None = None
    plural: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    watch: bool = False  # the legacy /watch/ prefix


def parse_api_path(path: str) -> ApiPath:
    """Parse a Kubernetes API path, including the cluster-scoped ``namespaces`` resource."""
    parts = [part for part in path.split("/") if part]
    version: str | None
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 2 and parts[0] == "apis":
        group, version, rest = parts[1], (parts[2] if len(parts) >= 3 else None), parts[3:]
    else:
        return ApiPath()
    watch = bool(rest[:1] == ["watch"])
    rest = rest[1:] if watch else rest
    namespace: str | None = None
    # namespaces/N/<plural>... is a namespace prefix; namespaces[/N[/status|/finalize]] is the
    # cluster-scoped Namespace resource itself (kmock parses both as a prefix and fails).
    is_prefix = len(rest) >= 4 or (len(rest) == 3 and rest[2] not in NAMESPACE_SUBRESOURCES)
    if rest[:1] == ["namespaces"] and is_prefix:
        namespace, rest = rest[1], rest[2:]
    return ApiPath(
        group=group,
        version=version,
        plural=rest[0] if rest else None,
        namespace=namespace,
        name=rest[1] if len(rest) > 1 else None,
        subresource="/".join(rest[2:]) or None,
        watch=watch,
    )


def api_version_of(res: kmock.resource) -> str:
    return f"{res.group}/{res.version}" if res.group else str(res.version)


def _header(request: kmock.Request, name: str) -> str:
    for key, value in request.headers.items():
        if key.lower() == name.lower():
            return value
    return ""


def _content_type(request: kmock.Request) -> str:
    return _header(request, "Content-Type").split(";")[0].strip().lower()


def _decode_body(body: bytes, content_type: str) -> Any:
    """Decode a request body by its Content-Type; raise a Kubernetes error if impossible."""
    if not body:
        return None
    if content_type in UNSUPPORTED_BODIES:
        raise api_error(
            415,
            "UnsupportedMediaType",
            f"the emulator speaks JSON (and YAML for apply), not {content_type}"
            " (kubectl's create secret|configmap generators send protobuf: use apply -f)",
        )
    try:
        if content_type == CT_APPLY:
            return yaml.safe_load(body)
        return json.loads(body)
    except (ValueError, yaml.YAMLError) as exc:
        raise _bad_request(f"the request body is not valid: {exc}") from exc


def rbac_verb(request: kmock.Request) -> str | None:
    """The RBAC verb of an API request: get/list/watch/create/update/patch/delete/..."""
    if request.resource is None or request.resource.plural is None:
        return None
    method = str(request.method.value).upper()
    if method == "GET":
        if request.action == kmock.action.WATCH:
            return "watch"
        return "get" if request.name else "list"
    if method == "DELETE":
        return "delete" if request.name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method)


def _is_dry_run(request: kmock.Request, options: Any = None) -> bool:
    if request.params.get("dryRun"):
        return True
    return isinstance(options, dict) and bool(options.get("dryRun"))


# --------------------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: maps merge recursively, ``null`` deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: JSON = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: JSON, ops: Any, res: kmock.resource, name: str) -> JSON:
    """RFC 6902 JSON patch; a failed ``test`` or a missing path is 422, as in the API server."""
    if not isinstance(ops, list) or not all(isinstance(op, dict) and "op" in op for op in ops):
        raise _bad_request("a JSON patch must be a list of operations")
    try:
        result = jsonpatch.apply_patch(target, ops, in_place=False)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise _invalid(res, name, f"the JSON patch cannot be applied: {exc}") from exc
    if not isinstance(result, dict):
        raise _invalid(res, name, "the JSON patch did not produce an object")
    return result


_MERGE_KEYS: Final[Mapping[str, str]] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "imagePullSecrets": "name",
    "resourceClaims": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ownerReferences": "uid",
    "conditions": "type",
    "hostAliases": "ip",
}
_SET_LISTS: Final = frozenset({"finalizers"})
_MISSING: Final = object()
_DELETE: Final = object()


def _merge_key(field: str, items: Iterable[Any]) -> str | None:
    if field == "ports":
        has_container_port = any(isinstance(i, dict) and "containerPort" in i for i in items)
        return "containerPort" if has_container_port else "port"
    return _MERGE_KEYS.get(field)


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: _strip_directives(item)
            for key, item in value.items()
            if not key.startswith("$") and item is not None
        }
    if isinstance(value, list):
        return [_strip_directives(item) for item in value]
    return value


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A strategic merge patch (see the module docstring for what is supported)."""
    if not isinstance(patch, dict):
        return _strip_directives(patch)
    result = _smp_map(target if isinstance(target, dict) else {}, patch)
    return {} if result is _DELETE else result


def _smp_map(target: JSON, patch: JSON) -> Any:
    directive = patch.get("$patch")
    if directive == "delete":
        return _DELETE
    if directive == "replace":
        return _strip_directives(patch)
    result = copy.deepcopy(target)
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = _smp_map(result[key] if isinstance(result.get(key), dict) else {}, value)
            if merged is _DELETE:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            current = result.get(key)
            result[key] = _smp_list(key, current if isinstance(current, list) else [], value)
        else:
            result[key] = value
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/") and isinstance(value, list):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [item for item in result[field] if item not in value]
        elif key.startswith("$setElementOrder/") and isinstance(value, list):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = _reorder(field, result[field], value)
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {key: value for key, value in result.items() if key in retain}
    return result


def _smp_list(field: str, target: list[Any], patch: list[Any]) -> list[Any]:
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [
            _strip_directives(item)
            for item in patch
            if not (isinstance(item, dict) and item.get("$patch") == "replace")
        ]
    if field in _SET_LISTS:
        return list(target) + [item for item in patch if item not in target]
    key = _merge_key(field, [*target, *patch])
    if key is None or not all(isinstance(item, dict) for item in patch):
        replaced: list[Any] = _strip_directives(patch)
        return replaced
    result = copy.deepcopy(target)
    for item in patch:
        index = next(
            (
                i
                for i, old in enumerate(result)
                if isinstance(old, dict) and old.get(key) == item.get(key)
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append(_strip_directives(item))
        else:
            merged = _smp_map(result[index], item)
            if merged is _DELETE:
                del result[index]
            else:
                result[index] = merged
    return result


def _reorder(field: str, items: list[Any], order: list[Any]) -> list[Any]:
    key = _merge_key(field, items)

    def ident(item: Any) -> Any:
        return item.get(key) if key and isinstance(item, dict) else json.dumps(item, sort_keys=True)

    wanted = [ident(item) for item in order]
    ranked = sorted(
        enumerate(items),
        key=lambda pair: (
            wanted.index(ident(pair[1])) if ident(pair[1]) in wanted else len(wanted),
            pair[0],
        ),
    )
    return [item for _, item in ranked]


def prune_unapplied(live: JSON, previous: JSON, applied: JSON, others: list[JSON]) -> None:
    """Remove from ``live`` what a field manager applied before but no longer applies.

    A field survives if another manager's applied config still has it. This stands in for
    the ``managedFields`` bookkeeping of server-side apply (fields owned by PATCH/PUT writers
    are not tracked: they are never removed by an apply).
    """
    for key, before in previous.items():
        if key.startswith("$") or key not in live:
            continue
        now = applied.get(key, _MISSING)
        theirs = [other[key] for other in others if key in other]
        current = live[key]
        if isinstance(before, dict) and isinstance(current, dict):
            prune_unapplied(
                current,
                before,
                now if isinstance(now, dict) else {},
                [item for item in theirs if isinstance(item, dict)],
            )
            if now is _MISSING and not theirs and not current:
                del live[key]
        elif isinstance(before, list) and isinstance(current, list) and _merge_key(key, before):
            merge_key = _merge_key(key, [*before, *current])
            kept = {
                i.get(merge_key)
                for i in (now if isinstance(now, list) else [])
                if isinstance(i, dict)
            }
            kept |= {
                i.get(merge_key)
                for t in theirs
                if isinstance(t, list)
                for i in t
                if isinstance(i, dict)
            }
            gone = {i.get(merge_key) for i in before if isinstance(i, dict)} - kept
            live[key] = [
                i for i in current if not (isinstance(i, dict) and i.get(merge_key) in gone)
            ]
        elif now is _MISSING and not theirs:
            del live[key]


# --------------------------------------------------------------------------- selectors

Matcher = Callable[[JSON], bool]
_LABEL_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_SET_REQUIREMENT = re.compile(rf"^({_LABEL_KEY})\s+(in|notin)\s+\(([^)]*)\)$")
_EQ_REQUIREMENT = re.compile(rf"^({_LABEL_KEY})\s*(==|=|!=)\s*([-A-Za-z0-9_.]*)$")
_EXISTS_REQUIREMENT = re.compile(rf"^(!?)\s*({_LABEL_KEY})$")


def _split_requirements(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return [part for part in parts if part]


@dataclass(frozen=True)
class Requirement:
    """One requirement of a label or field selector; ``exists``/``!exists`` ignore values."""

    key: str
    op: str  # in, notin, exists, !exists (label selectors: = and == are "in", != is "notin")
    values: frozenset[str] = frozenset()

    def holds(self, value: str | None) -> bool:
        if self.op == "exists":
            return value is not None
        if self.op == "!exists":
            return value is None
        return (value in self.values) == (self.op == "in")


def _requirement(key: str, op: str, values: Iterable[str]) -> Requirement:
    op = {"=": "in", "==": "in", "!=": "notin"}.get(op, op)
    return Requirement(key, op, frozenset(value.strip() for value in values))


def parse_label_selector(text: str) -> Matcher:
    """Equality- and set-based label selectors, as in ``?labelSelector=``."""
    requirements: list[Requirement] = []
    for requirement in _split_requirements(text):
        if match := _SET_REQUIREMENT.match(requirement):
            requirements.append(_requirement(match[1], match[2], match[3].split(",")))
        elif match := _EQ_REQUIREMENT.match(requirement):
            requirements.append(_requirement(match[1], match[2], [match[3]]))
        elif match := _EXISTS_REQUIREMENT.match(requirement):
            requirements.append(Requirement(match[2], "!exists" if match[1] else "exists"))
        else:
            raise _bad_request(f"unable to parse requirement: {requirement!r}")

    def matches(obj: JSON) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(r.holds(labels.get(r.key)) for r in requirements)

    return matches


def _field_value(obj: JSON, path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_field_selector(text: str) -> Matcher:
    """Field selectors (``=``, ``==``, ``!=``) on any dotted path, e.g. ``metadata.name=x``."""
    requirements: list[Requirement] = []
    for requirement in _split_requirements(text):
        match = re.match(r"^([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)$", requirement)
        if not match:
            raise _bad_request(f"invalid field selector: {requirement!r}")
        requirements.append(_requirement(match[1], match[2], [match[3]]))

    def matches(obj: JSON) -> bool:
        return all(r.holds(_field_value(obj, r.key)) for r in requirements)

    return matches


# --------------------------------------------------------------------------- the server


@dataclass(frozen=True)
class WatchEvent:
    rv: int
    resource: kmock.resource
    type: str  # ADDED, MODIFIED, DELETED
    object: JSON
    old: JSON | None  # the previous state, for selector transitions


class _ServeNatively(Exception):
    """Raised by the emulator's fallback reaction: the request goes to the emulator itself."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(obj: JSON) -> JSON:
    meta = obj.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise _bad_request("metadata must be an object")
    return meta


def _normalise(obj: JSON) -> None:
    """Drop empty metadata collections, as the API server's JSON does (omitempty)."""
    meta = _meta(obj)
    for field in ("finalizers", "ownerReferences", "labels", "annotations"):
        if field in meta and not meta[field]:
            del meta[field]


@attrs.define(kw_only=True)
class ServegateKubernetes(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator made faithful enough for kubectl, kopf and the client.

    Register resources with :meth:`register` (or by creating a CRD object). Objects are in
    ``emu.objects[resource, namespace, name]`` with their history, the request log in
    ``emu.requests``, and kmock reactions (``emu['patch', ...] << 500``) take precedence
    over the emulation: an intercepted request changes nothing, as a rejected one would.
    All methods must run on the emulator's event loop (see :class:`EmulatedCluster`).
    """

    require_namespaces: bool = True  # namespaced objects need their Namespace, as in a cluster

    _rv: int = attrs.field(default=0, init=False)
    _log: list[WatchEvent] = attrs.field(factory=list, init=False)
    _log_rvs: list[int] = attrs.field(factory=list, init=False)
    _changed: asyncio.Condition = attrs.field(init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _custom: set[kmock.resource] = attrs.field(factory=set, init=False)
    _applied: dict[tuple[ObjectKey, str, str], JSON] = attrs.field(factory=dict, init=False)
    _orphaning: set[str] = attrs.field(factory=set, init=False)
    server_errors: list[BaseException] = attrs.field(factory=list, init=False)
    authorize: Callable[[kmock.Request], None] | None = attrs.field(default=None, init=False)
    """Called with every request before it is served (``ReviewAuthority.enforce``): it
    raises a 401 or 403 ``KubernetesError`` to refuse it. None: every client is admin."""

    def __attrs_post_init__(self) -> None:
        # kmock's discovery routes and the 404 fallback, but not its object handling (which
        # mutates state before the reactions run): object requests go to self._serve().
        kmock_k8s.KubernetesScaffold.__attrs_post_init__(self)
        self._changed = asyncio.Condition(self._lock)
        self.fallback["get /openapi/v3"] << self._serve_openapi_index
        self.fallback["get", re.compile(r"/openapi/v3/.+")] << self._serve_openapi_document
        self.fallback[self._is_object_request] << self._defer_to_emulator

    # ------------------------------------------------------------- registration

    def register(
        self,
        api_version: str,
        plural: str,
        kind: str,
        *,
        namespaced: bool = True,
        shortnames: Iterable[str] = (),
        subresources: Iterable[str] = (),
        categories: Iterable[str] = (),
        singular: str | None = None,
        custom: bool = False,
    ) -> kmock.resource:
        """Serve a resource (discovery + storage). ``custom`` rejects strategic patches."""
        group, _, version = api_version.rpartition("/")
        res = kmock.resource(group, version, plural)
        self._resources[res] = kmock.ResourceInfo(
            kind=kind,
            namespaced=namespaced,
            singular=singular or kind.lower(),
            verbs=ALL_VERBS,
            shortnames=set(shortnames),
            subresources=set(subresources),
            categories=set(categories),
        )
        if custom:
            self._custom.add(res)
        return res

    def unregister(self, res: kmock.resource) -> None:
        if res in self._resources:
            del self._resources[res]
        self._custom.discard(res)

    def resource_for(self, api_version: str, kind: str) -> kmock.resource:
        """The registered resource of an object's ``apiVersion`` and ``kind``."""
        for res in self._registered():
            if api_version_of(res) == api_version and self._resources[res].kind == kind:
                return res
        raise LookupError(f"no resource is registered for {api_version} {kind}")

    def _info(self, res: kmock.resource) -> kmock.ResourceInfo:
        if res not in self._resources:
            raise _no_such_resource()
        info = self._resources[res]
        # Also for resources registered the kmock way: emu.resources['g/v/plural'] = {...}
        info.kind = info.kind or str(res.plural).capitalize()
        info.namespaced = True if info.namespaced is None else info.namespaced
        return info

    def _registered(self) -> list[kmock.resource]:
        return [res for res in self._resources if isinstance(res, kmock.resource)]

    def _get_resources(self) -> list[kmock.resource]:
        # Discovery shows the registered resources only (not those of leftover objects).
        return self._registered()

    # ------------------------------------------------------------- discovery fixes

    async def _serve_server_version(self, request: kmock.Request) -> kmock.Payload:
        return {
            "major": "1",
            "minor": "32",
            "gitVersion": "v1.32.0+servegate-emulator",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2024-12-11T00:00:00Z",
            "goVersion": "go1.23.4",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    async def _serve_api(self, request: kmock.Request) -> kmock.Payload:
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
        }

    async def _serve_version(self, request: kmock.Request) -> kmock.Payload:
        assert request.resource is not None  # the route matches /api/V and /apis/G/V only
        group, version = request.resource.group, request.resource.version
        found = [r for r in self._registered() if r.group == group and r.version == version]
        if not found and group != "":
            raise kmock.KubernetesResourceNotFoundError()
        entries: list[JSON] = []
        for res in sorted(found, key=lambda r: str(r.plural)):
            info = self._resources[res]
            entry: JSON = {
                "name": res.plural,
                "singularName": info.singular or "",
                "namespaced": bool(info.namespaced),
                "kind": info.kind,
                "verbs": sorted(info.verbs or ALL_VERBS),
            }
            if info.shortnames:
                entry["shortNames"] = sorted(info.shortnames)
            if info.categories:
                entry["categories"] = sorted(info.categories)
            entries.append(entry)
            for sub in sorted(info.subresources):
                entries.append(
                    {
                        "name": f"{res.plural}/{sub}",
                        "singularName": "",
                        "namespaced": bool(info.namespaced),
                        "kind": info.kind,
                        "verbs": list(SUBRESOURCE_VERBS),
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else str(version),  # not "/v1"
            "resources": entries,
        }

    def _openapi_documents(self) -> dict[str, JSON]:
        """Stub OpenAPI v3 documents: each resource's PATCH accepts ``fieldValidation``.

        kubectl (and Helm) then leave validation to the server (which skips it here)
        instead of failing with "failed to download openapi". There are no schemas.
        """
        documents: dict[str, JSON] = {}
        for res in sorted(
            self._registered(), key=lambda r: (str(r.group), str(r.version), str(r.plural))
        ):
            info = self._resources[res]
            prefix = f"apis/{res.group}/{res.version}" if res.group else f"api/{res.version}"
            scope = "/namespaces/{namespace}" if info.namespaced else ""
            document = documents.setdefault(
                prefix,
                {
                    "openapi": "3.0.0",
                    "info": {"title": "Kubernetes (servegate emulator)", "version": "v1.32.0"},
                    "paths": {},
                },
            )
            document["paths"][f"/{prefix}{scope}/{res.plural}/{{name}}"] = {
                "patch": {
                    "x-kubernetes-group-version-kind": {
                        "group": res.group,
                        "version": res.version,
                        "kind": info.kind,
                    },
                    "parameters": [
                        {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}
                    ],
                    "responses": {"200": {"description": "OK"}},
                }
            }
        return documents

    async def _serve_openapi_index(self, request: kmock.Request) -> kmock.Payload:
        paths = {}
        for prefix, document in self._openapi_documents().items():
            digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
            paths[prefix] = {"serverRelativeURL": f"/openapi/v3/{prefix}?hash={digest.upper()}"}
        return {"paths": paths}

    async def _serve_openapi_document(self, request: kmock.Request) -> kmock.Payload:
        prefix = request.url.path.removeprefix("/openapi/v3/")
        document = self._openapi_documents().get(prefix)
        if document is None:
            raise _no_such_resource()
        return document

    # ------------------------------------------------------------- HTTP entry

    @staticmethod
    def _is_object_request(request: kmock.Request) -> bool:
        return request.resource is not None and request.resource.plural is not None

    @staticmethod
    def _defer_to_emulator() -> kmock.Payload:
        raise _ServeNatively()

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        raw_response: aiohttp.web.StreamResponse | None = None
        try:
            request = await self._parse_request(raw_request, id=len(self._requests))
            self._requests.append(request)
            if self.authorize is not None:
                self.authorize(request)
            try:
                return await self._handle(request)
            except kmock_rendering.StreamingError as exc:  # a user reaction failed mid-stream
                raw_response = exc.args[0]
                raise exc.__cause__ or exc from None
        except kmock.KubernetesError as exc:  # an API answer, not a server failure
            body = _status_body(exc.status, exc.reason, exc.message, exc.details)
            return aiohttp.web.json_response(body, status=exc.status)
        except Exception as exc:
            self.server_errors.append(exc)
            if self._errors:
                self._errors[-1].append(exc)
            if raw_response is not None and raw_response.prepared:
                await self._stream_error(exc, raw_response)
                return raw_response
            body = _status_body(
                500, type(exc).__name__, repr(exc), {"traceback": traceback.format_exc()}
            )
            return aiohttp.web.json_response(body, status=500)

    async def _parse_request(self, raw: aiohttp.web.BaseRequest, *, id: int) -> kmock.Request:
        body = await raw.read()
        path = parse_api_path(raw.path)
        params = dict(raw.query)
        method = raw.method.upper()
        content_type = raw.headers.get("Content-Type", "").split(";")[0].strip().lower()
        try:
            data = _decode_body(body, content_type)
        except kmock.KubernetesError:
            data = None  # reported when served
        resource = None
        action: kmock.action | None = None
        if path.group is not None:
            resource = kmock.resource(group=path.group, version=path.version, plural=path.plural)
        if path.plural is not None:
            watching = path.watch or params.get("watch", "").lower() in {"true", "1"}
            if method == "GET" and watching:
                action = kmock.action.WATCH
            elif method == "GET":
                action = kmock.action.FETCH if path.name else kmock.action.LIST
            elif method == "POST":
                action = kmock.action.CREATE
            elif method in {"PATCH", "PUT"} and path.name:
                action = kmock.action.UPDATE
            elif method == "DELETE" and path.name:
                action = kmock.action.DELETE
        return kmock.Request(
            id=id,
            raw_request=raw,
            url=raw.url,
            method=raw.method,
            params=params,
            headers=dict(raw.headers),
            cookies=dict(raw.cookies),
            body=body,
            text=body.decode("utf-8", errors="replace"),
            data=data,
            action=action,
            resource=resource,
            namespace=path.namespace,
            name=path.name,
            subresource=path.subresource,
        )

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        try:
            # User reactions first, then kmock's discovery, then our fallback marker.
            return await kmock.RawHandler._handle(self, request)
        except _ServeNatively:
            return await self._serve(request)

    async def close_watches(self) -> None:
        """End every watch stream (before the HTTP server shuts down)."""
        async with self._lock:
            self._closing = True
            self._changed.notify_all()

    # ------------------------------------------------------------- the API

    async def _serve(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        assert res is not None and res.plural is not None  # see _is_object_request()
        info = self._info(res)
        if request.subresource and request.subresource not in info.subresources:
            raise _no_such_resource()
        if request.namespace is not None and not info.namespaced:
            raise _no_such_resource()
        verb = rbac_verb(request)
        if verb == "watch":
            return await self._stream_watch(request, res, info)
        async with self._lock:
            try:
                status, payload = self._dispatch(verb, request, res, info)
            finally:
                self._changed.notify_all()  # whatever was written, even if it failed later
        return aiohttp.web.json_response(payload, status=status)

    def _dispatch(
        self,
        verb: str | None,
        request: kmock.Request,
        res: kmock.resource,
        info: kmock.ResourceInfo,
    ) -> tuple[int, JSON]:
        if verb == "list":
            return 200, self._list(request, res, info)
        if verb == "create":
            if request.subresource:
                raise api_error(405, "MethodNotAllowed", "the emulator cannot create subresources")
            body = self._body_object(request)
            namespace = request.namespace or _meta(body).get("namespace")
            created = self._create(res, info, body, namespace, dry_run=_is_dry_run(request))
            self._reconcile()
            return 201, created
        if verb == "deletecollection":
            return 200, self._delete_collection(request, res, info)
        if verb not in {"get", "update", "patch", "delete"}:
            raise api_error(
                405, "MethodNotAllowed", f"{request.method.value} is not supported here"
            )
        assert request.name is not None
        if info.namespaced and request.namespace is None:
            raise _no_such_resource()
        key: ObjectKey = (res, request.namespace if info.namespaced else None, request.name)
        if verb == "get":
            return 200, self._get_live(key)
        status, result = {
            "update": self._replace,
            "patch": self._patch,
            "delete": self._delete_request,
        }[verb](request, res, info, key)
        self._reconcile()
        return status, result

    # ------------------------------------------------------------- storage

    def _live(self, key: ObjectKey) -> JSON | None:
        if key not in self._objects:
            return None
        obj = self._objects[key]
        return None if obj.deleted else obj.raw

    def _get_live(self, key: ObjectKey) -> JSON:
        obj = self._live(key)
        if obj is None:
            raise _not_found(key[0], key[2])
        return obj

    def _live_objects(self, res: kmock.resource | None = None) -> list[tuple[ObjectKey, JSON]]:
        return [
            (key, obj.raw)
            for key, obj in list(self._objects.items())
            if not obj.deleted and (res is None or key[0] == res)
        ]

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _store(self, key: ObjectKey, obj: JSON) -> None:
        if key in self._objects:
            self._objects[key].create(obj)  # a new version (kmock keeps the history)
        else:
            self._objects[key] = obj

    def _emit(self, res: kmock.resource, type_: str, obj: JSON, old: JSON | None) -> None:
        event = WatchEvent(rv=self._rv, resource=res, type=type_, object=obj, old=old)
        self._log.append(event)
        self._log_rvs.append(event.rv)

    def _body_object(self, request: kmock.Request) -> JSON:
        body = _decode_body(request.body, _content_type(request))
        if not isinstance(body, dict):
            raise _bad_request("the request body must be a JSON object")
        return body

    def _check_type(self, res: kmock.resource, info: kmock.ResourceInfo, body: JSON) -> None:
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if api_version is not None and api_version != api_version_of(res):
            raise _bad_request(f"apiVersion {api_version!r} does not match {api_version_of(res)!r}")
        if kind is not None and kind != info.kind:
            raise _bad_request(f"kind {kind!r} does not match {info.kind!r}")

    def _admit(self, res: kmock.resource, obj: JSON, old: JSON | None) -> None:
        """Built-in server behaviours applied to every write of some kinds."""
        if res == SECRETS and isinstance(obj.get("stringData"), dict):
            data = dict(obj.get("data") or {})
            for key, value in obj.pop("stringData").items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            obj["data"] = data
        if res == NAMESPACES:
            if old is None:
                obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            phase = "Terminating" if _meta(obj).get("deletionTimestamp") else "Active"
            obj.setdefault("status", {})["phase"] = phase
        if res == CRDS:  # the CRD controller accepts every CRD at once
            spec = obj.get("spec", {})
            since = _meta(obj).get("creationTimestamp")
            conditions = [
                ("NamesAccepted", "NoConflicts", "no conflicts found"),
                ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
            ]
            obj["status"] = {
                "acceptedNames": copy.deepcopy(spec.get("names", {})),
                "storedVersions": [v["name"] for v in spec.get("versions", []) if v.get("storage")],
                "conditions": [
                    {
                        "type": t,
                        "status": "True",
                        "reason": r,
                        "message": m,
                        "lastTransitionTime": since,
                    }
                    for t, r, m in conditions
                ],
            }

    def _after_write(self, res: kmock.resource, obj: JSON) -> None:
        if res == CRDS:
            spec = obj.get("spec", {})
            names = spec.get("names", {})
            for version in spec.get("versions", []):
                if version.get("served", True):
                    self.register(
                        f"{spec.get('group')}/{version.get('name')}",
                        names.get("plural", ""),
                        names.get("kind", ""),
                        namespaced=spec.get("scope") == "Namespaced",
                        shortnames=names.get("shortNames") or (),
                        categories=names.get("categories") or (),
                        singular=names.get("singular"),
                        subresources=(version.get("subresources") or {}).keys(),
                        custom=True,
                    )

    def _create(
        self,
        res: kmock.resource,
        info: kmock.ResourceInfo,
        body: JSON,
        namespace: str | None,
        *,
        dry_run: bool = False,
    ) -> JSON:
        self._check_type(res, info, body)
        obj = copy.deepcopy(body)
        meta = _meta(obj)
        if info.namespaced:
            if not namespace:
                raise _bad_request("the namespace of the provided object is missing")
            if meta.get("namespace") not in {None, "", namespace}:
                raise _bad_request("the namespace of the provided object does not match the URL")
            meta["namespace"] = namespace
            if self.require_namespaces and self._live((NAMESPACES, None, namespace)) is None:
                raise _not_found(NAMESPACES, namespace)
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise _invalid(
                    res, "", "metadata.name: Required value: name or generateName is required"
                )
            suffix = "".join(random.choices(GENERATE_NAME_ALPHABET, k=5))
            meta["name"] = f"{meta['generateName']}{suffix}"
        key: ObjectKey = (res, meta.get("namespace"), meta["name"])
        if self._live(key) is not None:
            raise api_error(
                409,
                "AlreadyExists",
                f'{_qualified(res)} "{meta["name"]}" already exists',
                name=meta["name"],
                group=res.group,
                kind=res.plural,
            )
        if "status" in info.subresources:
            obj.pop("status", None)
        for field in (
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ):
            meta.pop(field, None)
        obj["apiVersion"], obj["kind"] = api_version_of(res), info.kind
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        self._admit(res, obj, None)
        _normalise(obj)
        if dry_run:
            meta["resourceVersion"] = str(self._rv)
            return obj
        meta["resourceVersion"] = self._next_rv()
        self._store(key, obj)
        self._emit(res, "ADDED", obj, None)
        self._after_write(res, obj)
        return obj

    def _update(
        self,
        res: kmock.resource,
        info: kmock.ResourceInfo,
        key: ObjectKey,
        old: JSON,
        new: JSON,
        *,
        dry_run: bool = False,
    ) -> JSON:
        """Write a client's new state of an object: keep what the server owns."""
        self._check_type(res, info, new)
        new = copy.deepcopy(new)
        meta, old_meta = _meta(new), old["metadata"]
        for field in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
        ):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        new["apiVersion"], new["kind"] = api_version_of(res), info.kind
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise _invalid(
                    res,
                    key[2],
                    f"metadata.finalizers: Forbidden: no new finalizers can be added if the"
                    f" object is being deleted, found new finalizers {sorted(added)!r}",
                )
        ignored = {"metadata", "status"} if "status" in info.subresources else {"metadata"}
        if {k: v for k, v in new.items() if k not in ignored} != {
            k: v for k, v in old.items() if k not in ignored
        }:
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        self._admit(res, new, old)
        _normalise(new)
        if dry_run:
            return new
        return self._write(res, key, old, new)

    def _write(self, res: kmock.resource, key: ObjectKey, old: JSON, new: JSON) -> JSON:
        """Commit a new state (already checked): a no-op, an update, or the final removal."""
        if new == old:
            return old  # no change, no new resourceVersion, no event (as the API server does)
        if new["metadata"].get("deletionTimestamp") and not self._blockers(res, new):
            return self._remove(res, key, new)
        new["metadata"]["resourceVersion"] = self._next_rv()
        self._store(key, new)
        self._emit(res, "MODIFIED", new, old)
        self._after_write(res, new)
        return new

    @staticmethod
    def _blockers(res: kmock.resource, obj: JSON) -> list[str]:
        blockers = list(obj.get("metadata", {}).get("finalizers") or [])
        if res == NAMESPACES:
            blockers += obj.get("spec", {}).get("finalizers") or []
        return blockers

    def _remove(self, res: kmock.resource, key: ObjectKey, obj: JSON) -> JSON:
        """Remove an object for good: DELETED event, then the server's cleanups."""
        final = copy.deepcopy(obj)
        final["metadata"]["resourceVersion"] = self._next_rv()
        self._objects[key].delete()
        self._emit(res, "DELETED", final, obj)
        for applied_key in [k for k in self._applied if k[0] == key]:
            del self._applied[applied_key]
        uid = final["metadata"].get("uid")
        if uid in self._orphaning:
            self._orphaning.discard(uid)
            self._orphan_dependents(uid)
        if res == CRDS:
            self._remove_crd_resources(final)
        return final

    def _orphan_dependents(self, uid: str) -> None:
        for key, obj in self._live_objects():
            refs = obj.get("metadata", {}).get("ownerReferences") or []
            if any(ref.get("uid") == uid for ref in refs):
                new = copy.deepcopy(obj)
                new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                _normalise(new)
                self._write(key[0], key, obj, new)

    def _remove_crd_resources(self, crd: JSON) -> None:
        spec = crd.get("spec", {})
        plural = spec.get("names", {}).get("plural")
        for version in spec.get("versions", []):
            res = kmock.resource(spec.get("group"), version.get("name"), plural)
            for key, obj in self._live_objects(res):
                self._remove(res, key, obj)
            self.unregister(res)

    def _delete_object(
        self,
        res: kmock.resource,
        key: ObjectKey,
        *,
        policy: str | None = None,
        preconditions: Any = None,
        dry_run: bool = False,
    ) -> JSON:
        obj = self._get_live(key)
        if isinstance(preconditions, dict):
            for field in ("uid", "resourceVersion"):
                wanted = preconditions.get(field)
                if wanted is not None and wanted != obj["metadata"].get(field):
                    raise _conflict(res, key[2])
        if dry_run:
            return obj
        if policy == "Orphan":
            self._orphaning.add(obj["metadata"]["uid"])
        if not self._blockers(res, obj):
            return self._remove(res, key, obj)
        if obj["metadata"].get("deletionTimestamp"):
            return obj  # already being deleted
        new = copy.deepcopy(obj)
        new["metadata"].update(
            deletionTimestamp=_now(),
            deletionGracePeriodSeconds=0,
            generation=int(obj["metadata"].get("generation", 1)) + 1,
        )
        self._admit(res, new, obj)
        return self._write(res, key, obj, new)

    def _reconcile(self) -> None:
        """The controllers the operator relies on: ownerReference GC and namespace cleanup."""
        for _ in range(100_000):  # every step makes progress; this only bounds a bug
            step = self._next_controller_step()
            if step is None:
                return
            step()
        raise RuntimeError("the emulated controllers do not converge")

    def _next_controller_step(self) -> Callable[[], object] | None:
        live = self._live_objects()
        uids = {obj["metadata"].get("uid") for _, obj in live}
        for key, obj in live:  # background GC: every owner is gone → delete the dependent
            meta = obj["metadata"]
            refs = meta.get("ownerReferences") or []
            if (
                refs
                and not meta.get("deletionTimestamp")
                and all(r.get("uid") not in uids for r in refs)
            ):
                return functools.partial(self._delete_object, key[0], key, policy="Background")
        for key, obj in live:  # the namespace controller
            if key[0] != NAMESPACES or not obj["metadata"].get("deletionTimestamp"):
                continue
            content = [(k, o) for k, o in live if k[1] == key[2] and k[0] != NAMESPACES]
            for k, o in content:
                if not o["metadata"].get("deletionTimestamp"):
                    return functools.partial(self._delete_object, k[0], k)
            finalizers = obj.get("spec", {}).get("finalizers") or []
            if not content and finalizers:
                new = copy.deepcopy(obj)
                new["spec"]["finalizers"] = []
                return functools.partial(self._write, NAMESPACES, key, obj, new)
        return None

    # ------------------------------------------------------------- verbs

    def _selected(self, request: kmock.Request) -> Matcher:
        labels = parse_label_selector(request.params.get("labelSelector", ""))
        fields = parse_field_selector(request.params.get("fieldSelector", ""))
        namespace, name = request.namespace, request.name

        def matches(obj: JSON) -> bool:
            meta = obj.get("metadata", {})
            return (
                (namespace is None or meta.get("namespace") == namespace)
                and (name is None or meta.get("name") == name)
                and labels(obj)
                and fields(obj)
            )

        return matches

    def _list(self, request: kmock.Request, res: kmock.resource, info: kmock.ResourceInfo) -> JSON:
        matches = self._selected(request)
        items = sorted(
            (obj for _, obj in self._live_objects(res) if matches(obj)),
            key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]),
        )
        list_meta: JSON = {"resourceVersion": str(self._rv)}
        offset = int(request.params.get("continue") or 0)
        limit = int(request.params.get("limit") or 0)
        items = items[offset:]
        if limit and len(items) > limit:
            list_meta["continue"] = str(offset + limit)
            list_meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return {
            "kind": f"{info.kind}List",
            "apiVersion": api_version_of(res),
            "metadata": list_meta,
            "items": items,
        }

    def _replace(
        self, request: kmock.Request, res: kmock.resource, info: kmock.ResourceInfo, key: ObjectKey
    ) -> tuple[int, JSON]:
        body = self._body_object(request)
        old = self._get_live(key)
        meta = _meta(body)
        if meta.get("name") not in {None, key[2]}:
            raise _bad_request("the name of the object does not match the name in the URL")
        wanted = meta.get("resourceVersion")
        if wanted not in {None, ""} and wanted != old["metadata"].get("resourceVersion"):
            raise _conflict(res, key[2])
        new = self._scope(info, request.subresource, old, body)
        return 200, self._update(res, info, key, old, new, dry_run=_is_dry_run(request))

    def _scope(
        self, info: kmock.ResourceInfo, subresource: str | None, old: JSON, new: JSON
    ) -> JSON:
        """Status-subresource semantics: what a write to this endpoint may change."""
        if subresource == "status":
            result = copy.deepcopy(old)
            if new.get("status") is None:
                result.pop("status", None)
            else:
                result["status"] = copy.deepcopy(new["status"])
            return result
        if subresource == "finalize":  # namespaces/N/finalize changes spec.finalizers only
            result = copy.deepcopy(old)
            result.setdefault("spec", {})["finalizers"] = (
                new.get("spec", {}).get("finalizers") or []
            )
            return result
        if "status" in info.subresources:
            result = copy.deepcopy(new)
            if "status" in old:
                result["status"] = copy.deepcopy(old["status"])
            else:
                result.pop("status", None)
            return result
        return new

    def _patch(
        self, request: kmock.Request, res: kmock.resource, info: kmock.ResourceInfo, key: ObjectKey
    ) -> tuple[int, JSON]:
        content_type = _content_type(request)
        body = _decode_body(request.body, content_type)
        dry_run = _is_dry_run(request)
        if content_type == CT_APPLY:
            return self._apply(request, res, info, key, body, dry_run=dry_run)
        old = self._get_live(key)
        if content_type == CT_JSON_PATCH:
            patched = json_patch(old, body, res, key[2])
        elif content_type == CT_MERGE:
            patched = merge_patch(old, body)
        elif content_type == CT_STRATEGIC:
            if res in self._custom:
                raise api_error(
                    415,
                    "UnsupportedMediaType",
                    "strategic merge patch is not supported for custom resources:"
                    " use a merge patch",
                )
            patched = strategic_merge_patch(old, body)
        else:
            raise api_error(415, "UnsupportedMediaType", f"unsupported patch type {content_type!r}")
        if not isinstance(patched, dict):
            raise _invalid(res, key[2], "the patch did not produce an object")
        wanted = patched.get("metadata", {}).get("resourceVersion")
        if wanted != old["metadata"].get("resourceVersion"):
            raise _conflict(res, key[2])  # a resourceVersion in a patch is a precondition
        new = self._scope(info, request.subresource, old, patched)
        return 200, self._update(res, info, key, old, new, dry_run=dry_run)

    def _apply(
        self,
        request: kmock.Request,
        res: kmock.resource,
        info: kmock.ResourceInfo,
        key: ObjectKey,
        body: Any,
        *,
        dry_run: bool,
    ) -> tuple[int, JSON]:
        """Server-side apply: create-or-merge, remembering each manager's applied config."""
        if not isinstance(body, dict) or not body.get("apiVersion") or not body.get("kind"):
            raise _bad_request("an apply patch must be an object with apiVersion and kind")
        if _meta(body).get("name") not in {None, key[2]}:
            raise _bad_request("the name of the object does not match the name in the URL")
        manager = request.params.get("fieldManager") or ""
        applied_key = (key, manager, request.subresource or "")
        applied = _strip_directives(body)
        old = self._live(key)
        if old is None:
            if request.subresource:
                raise _not_found(res, key[2])
            _meta(applied)["name"] = key[2]
            created = self._create(res, info, applied, key[1], dry_run=dry_run)
            if not dry_run:
                self._applied[applied_key] = applied
            return 201, created
        merged = copy.deepcopy(old)
        previous = self._applied.get(applied_key)
        if previous is not None:
            others = [cfg for k, cfg in self._applied.items() if k[0] == key and k != applied_key]
            prune_unapplied(merged, previous, applied, others)
        merged = strategic_merge_patch(merged, applied)
        merged["metadata"]["resourceVersion"] = old["metadata"].get("resourceVersion")
        new = self._scope(info, request.subresource, old, merged)
        result = self._update(res, info, key, old, new, dry_run=dry_run)
        if not dry_run:
            self._applied[applied_key] = applied
        return 200, result

    def _delete_request(
        self, request: kmock.Request, res: kmock.resource, info: kmock.ResourceInfo, key: ObjectKey
    ) -> tuple[int, JSON]:
        options = _decode_body(request.body, _content_type(request)) or {}
        if not isinstance(options, dict):
            raise _bad_request("DeleteOptions must be an object")
        policy = request.params.get("propagationPolicy") or options.get("propagationPolicy")
        if (
            options.get("orphanDependents") is True
            or request.params.get("orphanDependents") == "true"
        ):
            policy = "Orphan"
        result = self._delete_object(
            res,
            key,
            policy=policy,
            preconditions=options.get("preconditions"),
            dry_run=_is_dry_run(request, options),
        )
        return 200, result

    def _delete_collection(
        self, request: kmock.Request, res: kmock.resource, info: kmock.ResourceInfo
    ) -> JSON:
        listed = self._list(request, res, info)
        dry_run = _is_dry_run(request)
        for obj in listed["items"]:
            meta = obj["metadata"]
            self._delete_object(res, (res, meta.get("namespace"), meta["name"]), dry_run=dry_run)
        self._reconcile()
        return listed

    # ------------------------------------------------------------- watch

    async def _stream_watch(
        self, request: kmock.Request, res: kmock.resource, info: kmock.ResourceInfo
    ) -> aiohttp.web.StreamResponse:
        matches = self._selected(request)
        since = request.params.get("resourceVersion", "")
        initial_events = request.params.get("sendInitialEvents", "").lower() == "true"
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        if since not in {"", "0"} and not since.isdigit():
            raise _bad_request(f"invalid resourceVersion {since!r}")
        async with self._lock:
            if since in {"", "0"} or initial_events:
                initial = [obj for _, obj in self._live_objects(res) if matches(obj)]
                cursor = len(self._log)
            else:
                initial = []
                cursor = bisect.bisect_right(self._log_rvs, int(since))
            initial_rv = self._rv

        assert request._raw_request is not None
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": CT_JSON})
        response.enable_chunked_encoding()
        await response.prepare(request._raw_request)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout

        async def send(type_: str, obj: JSON) -> None:
            line = json.dumps({"type": type_, "object": obj}, separators=(",", ":"))
            await response.write(line.encode() + b"\n")

        with contextlib.suppress(ConnectionError):
            for obj in initial:
                await send("ADDED", obj)
            if initial_events:
                bookmark = {
                    "kind": info.kind,
                    "apiVersion": api_version_of(res),
                    "metadata": {
                        "resourceVersion": str(initial_rv),
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                }
                await send("BOOKMARK", bookmark)
            while True:
                async with self._lock:
                    while cursor >= len(self._log) and not self._closing:
                        remaining = None if deadline is None else deadline - loop.time()
                        if remaining is not None and remaining <= 0:
                            break
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._changed.wait(), remaining)
                    batch, cursor = self._log[cursor:], len(self._log)
                for event in batch:
                    if event.resource == res and (translated := _translate(event, matches)):
                        await send(*translated)
                expired = deadline is not None and loop.time() >= deadline
                if not batch and (self._closing or expired):
                    break
            await response.write_eof()
        return response

    # ------------------------------------------------------------- helpers for tests

    async def create_object(self, obj: JSON) -> JSON:
        """Create an object as a client would (namespace ``default`` unless it has one)."""
        res = self.resource_for(obj["apiVersion"], obj["kind"])
        namespace = obj.get("metadata", {}).get("namespace") or "default"
        async with self._lock:
            try:
                created = self._create(res, self._info(res), obj, namespace)
            finally:
                self._changed.notify_all()
        return copy.deepcopy(created)

    async def read_object(
        self, res: kmock.resource, namespace: str | None, name: str
    ) -> JSON | None:
        async with self._lock:
            obj = self._live((res, namespace, name))
        return copy.deepcopy(obj)

    async def list_objects(self, res: kmock.resource) -> list[JSON]:
        async with self._lock:
            return copy.deepcopy([obj for _, obj in self._live_objects(res)])

    def rbac_calls(self, *, user_agent: str | None = None, since: int = 0) -> set[RbacCall]:
        """The (apiGroup, resource[/subresource], verb) triples the clients used, for RBAC.

        ``user_agent`` keeps only the requests whose User-Agent contains it (kopf sends
        ``kopf/...``, kubectl ``kubectl/...``, the python client ``OpenAPI-Generator/...``);
        ``since`` skips the first N requests of the log (``len(emu.requests)`` earlier).
        """
        calls: set[RbacCall] = set()
        for request in list(self._requests)[since:]:
            verb = rbac_verb(request)
            if verb is None or request.resource is None:
                continue
            if user_agent is not None and user_agent not in _header(request, "User-Agent"):
                continue
            resource = str(request.resource.plural)
            if request.subresource:
                resource = f"{resource}/{request.subresource}"
            calls.add((str(request.resource.group), resource, verb))
        return calls


def _translate(event: WatchEvent, matches: Matcher) -> tuple[str, JSON] | None:
    """A stored event as a watch with selectors sees it (un/matching changes: DELETED/ADDED)."""
    now = matches(event.object)
    before = event.old is not None and matches(event.old)
    if event.type == "MODIFIED":
        if now and before:
            return "MODIFIED", event.object
        if now:
            return "ADDED", event.object
        if before:
            return "DELETED", event.object
        return None
    return (event.type, event.object) if now else None


# --------------------------------------------------------------------------- resources


def register_builtin_resources(emu: ServegateKubernetes) -> None:
    """The built-in kinds servegate, kopf and the chart use."""
    register = emu.register
    register(
        "v1",
        "namespaces",
        "Namespace",
        namespaced=False,
        shortnames=["ns"],
        subresources=["status", "finalize"],
    )
    register("v1", "secrets", "Secret")
    register("v1", "configmaps", "ConfigMap", shortnames=["cm"])
    register(
        "v1", "services", "Service", shortnames=["svc"], subresources=["status"], categories=["all"]
    )
    register("v1", "serviceaccounts", "ServiceAccount", shortnames=["sa"])
    register("v1", "events", "Event", shortnames=["ev"])
    register("events.k8s.io/v1", "events", "Event", shortnames=["ev"])
    register(
        "apps/v1",
        "deployments",
        "Deployment",
        shortnames=["deploy"],
        subresources=["status"],
        categories=["all"],
    )
    register(
        "policy/v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        shortnames=["pdb"],
        subresources=["status"],
    )
    register(
        "autoscaling/v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        shortnames=["hpa"],
        subresources=["status"],
        categories=["all"],
    )
    register(
        "apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        shortnames=["crd", "crds"],
        subresources=["status"],
    )
    register("coordination.k8s.io/v1", "leases", "Lease")
    for plural, kind, namespaced in [
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
    ]:
        register("rbac.authorization.k8s.io/v1", plural, kind, namespaced=namespaced)
    register("kopf.dev/v1", "kopfpeerings", "KopfPeering", custom=True)
    register(
        "kopf.dev/v1", "clusterkopfpeerings", "ClusterKopfPeering", namespaced=False, custom=True
    )


def register_servegate_resources(emu: ServegateKubernetes) -> None:
    """Our CRD's resource (without a CRD object: apply the real CRD manifest if you need one)."""
    emu.register(
        "servegate.io/v1alpha1",
        "servingendpoints",
        "ServingEndpoint",
        shortnames=["sep"],
        subresources=["status"],
        custom=True,
    )


# --------------------------------------------------------------------------- running it


class EmulatedCluster:
    """A running emulator: its URL, kubeconfig, API clients, kubectl and sync helpers.

    The emulator runs on its own event loop in a background thread, so blocking clients
    (the ``kubernetes`` client, kubectl, kopf in a thread) can be used from the test.
    Touch ``emulator`` state only through :meth:`call` / :meth:`run` (the loop's thread).
    """

    def __init__(
        self,
        emulator: ServegateKubernetes,
        loop: asyncio.AbstractEventLoop,
        url: str,
        directory: Path,
    ) -> None:
        self.emulator = emulator
        self.loop = loop
        self.url = url
        self.directory = directory
        self.kubeconfig = directory / "kubeconfig.yaml"
        self._clients: list[kubernetes.client.ApiClient] = []
        self.kubeconfig.write_text(yaml.safe_dump(self.kubeconfig_dict(), sort_keys=False))

    def kubeconfig_dict(self, namespace: str = "default") -> JSON:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": TOKEN}}],
            "contexts": [
                {
                    "name": "emulator",
                    "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace},
                }
            ],
            "current-context": "emulator",
        }

    @property
    def env(self) -> dict[str, str]:
        """Environment variables for a subprocess (kopf, the operator) to use this cluster."""
        return {"KUBECONFIG": str(self.kubeconfig)}

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run a coroutine on the emulator's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Call a function on the emulator's loop (to read or change its state safely)."""

        async def wrapper() -> T:
            return fn()

        return self.run(wrapper(), timeout)

    def api_client(self) -> kubernetes.client.ApiClient:
        """A ``kubernetes`` client for this cluster (closed when the cluster stops)."""
        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        # The whole header value: this client's prefix setting is keyed by the auth
        # scheme's name ("BearerToken"), so a prefix keyed "authorization" is never used.
        configuration.api_key = {"authorization": f"Bearer {TOKEN}"}
        client = kubernetes.client.ApiClient(configuration)
        self._clients.append(client)
        return client

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster (own discovery cache, no ambient KUBECONFIG)."""
        command = [
            KUBECTL,
            f"--kubeconfig={self.kubeconfig}",
            f"--cache-dir={self.directory / 'kubectl-cache'}",
            *args,
        ]
        env = {key: value for key, value in os.environ.items() if key != "KUBECONFIG"}
        result = subprocess.run(
            command,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited with {result.returncode}:\n"
                f"{result.stderr}{result.stdout}"
            )
        return result

    def register(self, api_version: str, plural: str, kind: str, **kwargs: Any) -> kmock.resource:
        """Serve one more resource (see :meth:`ServegateKubernetes.register`)."""
        return self.call(lambda: self.emulator.register(api_version, plural, kind, **kwargs))

    def create(self, obj: JSON) -> JSON:
        """Seed an object, as if a client created it (namespace ``default`` unless set)."""
        return self.run(self.emulator.create_object(obj))

    def get(self, resource: str | kmock.resource, namespace: str | None, name: str) -> JSON | None:
        """An object's current state, or None. ``resource`` as ``'apps/v1/deployments'``."""
        return self.run(self.emulator.read_object(kmock.resource(resource), namespace, name))

    def list(self, resource: str | kmock.resource) -> list[JSON]:
        return self.run(self.emulator.list_objects(kmock.resource(resource)))

    def request_count(self) -> int:
        """How many requests were served so far (for ``rbac_calls(since=...)``)."""
        return self.call(lambda: len(self.emulator._requests))

    def rbac_calls(self, *, user_agent: str | None = None, since: int = 0) -> set[RbacCall]:
        """The (apiGroup, resource, verb) of API calls: :meth:`ServegateKubernetes.rbac_calls`."""
        return self.call(lambda: self.emulator.rbac_calls(user_agent=user_agent, since=since))

    def close_clients(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()


@contextlib.contextmanager
def running_kubernetes(
    directory: Path,
    *,
    servegate: bool = True,
    namespaces: Iterable[str] = DEFAULT_NAMESPACES,
    require_namespaces: bool = True,
    strict: bool = True,
    timeout: float = 10.0,
) -> Iterator[EmulatedCluster]:
    """Run the emulator on 127.0.0.1:<free port> in a background thread.

    ``directory`` receives ``kubeconfig.yaml`` and kubectl's cache. The built-in resources
    (and ServingEndpoints if ``servegate``) are registered; ``namespaces`` are created.
    With ``strict``, an exception inside the emulator (a 500, not an API error like 404)
    fails the ``with`` block on exit.
    """
    directory.mkdir(parents=True, exist_ok=True)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="k8s-emulator", daemon=True)
    thread.start()

    async def start() -> tuple[ServegateKubernetes, aiohttp.web.ServerRunner, str]:
        emulator = ServegateKubernetes(require_namespaces=require_namespaces)
        register_builtin_resources(emulator)
        if servegate:
            register_servegate_resources(emulator)
        await emulator.__aenter__()
        for name in namespaces:
            await emulator.create_object(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            )
        server = aiohttp.web.Server(emulator, handler_cancellation=True)
        runner = aiohttp.web.ServerRunner(server, shutdown_timeout=2.0)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return emulator, runner, f"http://{host}:{port}"

    async def stop(emulator: ServegateKubernetes, runner: aiohttp.web.ServerRunner) -> None:
        await emulator.close_watches()
        await runner.cleanup()
        await emulator.__aexit__(None, None, None)

    try:
        emulator, runner, url = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout)
        cluster = EmulatedCluster(emulator, loop, url, directory)
        try:
            yield cluster
        finally:
            cluster.close_clients()
            asyncio.run_coroutine_threadsafe(stop(emulator, runner), loop).result(timeout)
        if strict and emulator.server_errors:
            details = "\n".join(
                "".join(traceback.format_exception(exc)) for exc in emulator.server_errors
            )
            raise AssertionError(f"the Kubernetes emulator failed while serving:\n{details}")
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()
