"""TokenReview and SubjectAccessReview for the emulated cluster, answered as an API server
would.

kmock stores objects; reviews are not objects: they are create-only APIs whose answer
(``status``) the API server computes from the request. :class:`ReviewAuthority` answers them
through kmock reactions (``emu[POST, resource] << 201 << callback``: the callback receives
the parsed request and returns the body), which take precedence over the emulator's storage,
so nothing is stored, as in a cluster. The request log still records every review, for
assertions on how many were made.

- **Tokens** are issued by the authority for an :class:`Identity` (a ServiceAccount, a user)
  with audiences. A TokenReview authenticates a known token whose audiences intersect the
  review's ``spec.audiences`` (the API server's own audience when it asks none), and answers
  with the user and that intersection in ``status.audiences``, as kube-apiserver does.
- **Access** is decided by RBAC over the Roles, ClusterRoles, RoleBindings and
  ClusterRoleBindings stored in the emulator (create them with kubectl, the client, or
  :meth:`ReviewAuthority.grant`): rules with ``apiGroups``, ``resources``, ``verbs`` (``*``
  wildcards) and ``resourceNames``; subjects of kind User, Group and ServiceAccount.
  ``system:masters`` may do anything. RBAC never denies explicitly: an answer is either
  ``allowed: true`` with the rule that allowed it as ``reason``, or ``allowed: false``.
- **The reviewer** itself is authenticated and authorized, like any API client: its bearer
  token is the emulator's admin token (group ``system:masters``) or a token issued here for
  the API server's audience, and it needs ``create`` on ``tokenreviews`` and
  ``subjectaccessreviews`` (401 and 403 ``Status`` answers otherwise).

- **Every API request**, after :meth:`ReviewAuthority.enforce`: authenticated by its bearer
  token (401 ``Unauthorized`` without one the authority knows) and authorized by the same
  RBAC as the reviews (403 ``Forbidden``, worded as kube-apiserver words it). Requests are
  authorized as kube-apiserver does: ``resource/subresource``, the namespace of the URL
  (RoleBindings count only there), the name for ``get``/``update``/``patch``/``delete``
  (so ``resourceNames`` never grants ``create``, ``list`` or ``watch``), server-side apply
  as ``patch``, and as ``create`` too when it creates the object. Writing a (Cluster)RoleBinding also needs ``bind`` on the role it refers
  to. Discovery, ``/version`` and ``/openapi`` are open to every authenticated client
  (``system:discovery``). Refused requests are listed in ``denied``. A request without
  credentials is the emulator's admin: kubectl sends no bearer token to an ``http://``
  server, so kubectl always acts as the installer here.

Not emulated: token expiry, bound-object invalidation (use :meth:`ReviewAuthority.revoke`),
aggregated ClusterRoles, non-resource URL rules, authorizers other than RBAC, the escalation
check's other way out (a binding is also allowed when its writer holds every permission of
the role; here it always needs ``bind``), anonymous requests.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn

import kmock
import yaml

from tests.k8s.emulator import (
    JSON,
    TOKEN,
    EmulatedCluster,
    ServegateKubernetes,
    api_error,
    rbac_verb,
)

TOKEN_REVIEWS: Final = kmock.resource("authentication.k8s.io", "v1", "tokenreviews")
ACCESS_REVIEWS: Final = kmock.resource("authorization.k8s.io", "v1", "subjectaccessreviews")
API_SERVER_AUDIENCE: Final = "https://kubernetes.default.svc.cluster.local"
RBAC: Final = "rbac.authorization.k8s.io/v1"
ROLES: Final = kmock.resource("rbac.authorization.k8s.io", "v1", "roles")
CLUSTER_ROLES: Final = kmock.resource("rbac.authorization.k8s.io", "v1", "clusterroles")
ROLE_BINDINGS: Final = kmock.resource("rbac.authorization.k8s.io", "v1", "rolebindings")
CLUSTER_ROLE_BINDINGS: Final = kmock.resource(
    "rbac.authorization.k8s.io", "v1", "clusterrolebindings"
)
RBAC_GROUP: Final = "rbac.authorization.k8s.io"
BINDINGS: Final = frozenset({"rolebindings", "clusterrolebindings"})
POD_NAME_EXTRA: Final = "authentication.kubernetes.io/pod-name"
RETIRE: Final[kmock.Payload] = NotImplemented
"""Returned by a reaction's callback, it retires the reaction for good (kmock disables a
reaction that does not match) and the request goes to the next one: ends a fault."""


@dataclass(frozen=True)
class Identity:
    """Who a token stands for, and which audiences it was issued for."""

    username: str
    groups: tuple[str, ...] = ("system:authenticated",)
    audiences: tuple[str, ...] = (API_SERVER_AUDIENCE,)
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def user_info(self) -> JSON:
        info: JSON = {"username": self.username, "uid": self.uid, "groups": list(self.groups)}
        if self.extra:
            info["extra"] = {key: list(values) for key, values in self.extra.items()}
        return info


def service_account(
    namespace: str,
    name: str,
    *,
    audiences: Iterable[str] = (API_SERVER_AUDIENCE,),
    pod: str | None = None,
) -> Identity:
    """A ServiceAccount's identity as a projected token carries it (a pod-bound token
    also carries the pod's name as an extra attribute)."""
    return Identity(
        username=f"system:serviceaccount:{namespace}:{name}",
        groups=(
            "system:serviceaccounts",
            f"system:serviceaccounts:{namespace}",
            "system:authenticated",
        ),
        audiences=tuple(audiences),
        extra={POD_NAME_EXTRA: (pod,)} if pod else {},
    )


ADMIN: Final = Identity("kubernetes-admin", groups=("system:masters", "system:authenticated"))


@dataclass(frozen=True)
class Attributes:
    """What a SubjectAccessReview (or an API request) asks to do."""

    verb: str
    group: str
    resource: str
    namespace: str = ""
    name: str = ""


class ReviewAuthority:
    """Answers the emulator's TokenReviews and SubjectAccessReviews (see the module doc).

    ``tokens`` maps issued tokens to identities; tests change it with :meth:`issue` and
    :meth:`revoke`. The callbacks run on the emulator's loop and only read plain dicts and
    the emulator's stored RBAC objects.
    """

    def __init__(self, cluster: EmulatedCluster) -> None:
        self.cluster = cluster
        self.tokens: dict[str, Identity] = {}
        self.denied: list[tuple[str, Attributes]] = []
        """(username, what it asked) of every request :meth:`enforce` refused."""
        cluster.call(self._install)

    def enforce(self) -> None:
        """From now on, authenticate and authorize every API request (see the module doc):
        clients run with their own identity's permissions, as in a cluster."""
        self.cluster.call(lambda: setattr(self.cluster.emulator, "authorize", self._authorize))

    def kubeconfig(self, identity: Identity, path: Path) -> Path:
        """A kubeconfig for this cluster that authenticates as ``identity`` (a new token).
        A ServiceAccount's context namespace is its own, as the ``namespace`` file of its
        token mount tells a pod."""
        prefix = "system:serviceaccount:"
        if identity.username.startswith(prefix):
            namespace = identity.username.removeprefix(prefix).split(":")[0]
        else:
            namespace = "default"
        config = self.cluster.kubeconfig_dict(namespace)
        config["users"] = [{"name": "emulator", "user": {"token": self.issue(identity)}}]
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # ------------------------------------------------------------------ test API

    def issue(self, identity: Identity) -> str:
        """A new token for ``identity`` (random: tokens never repeat across tests)."""
        token = f"sgtest.{secrets.token_urlsafe(24)}"
        self.tokens[token] = identity
        return token

    def revoke(self, token: str) -> None:
        """The token stops authenticating (as when its pod is deleted)."""
        self.tokens.pop(token, None)

    def grant(
        self,
        name: str,
        subjects: Iterable[JSON],
        *,
        verbs: Iterable[str],
        resource_names: Iterable[str] = (),
        resources: Iterable[str] = ("servingendpoints",),
        api_groups: Iterable[str] = ("servegate.io",),
        namespace: str | None = "default",
    ) -> None:
        """A Role and a RoleBinding in ``namespace`` (a ClusterRole and ClusterRoleBinding
        when ``namespace`` is None), as a team would write them."""
        rule: JSON = {
            "apiGroups": list(api_groups),
            "resources": list(resources),
            "verbs": list(verbs),
        }
        if resource_names:
            rule["resourceNames"] = list(resource_names)
        kind = "Role" if namespace else "ClusterRole"
        metadata: JSON = {"name": name}
        if namespace:
            metadata["namespace"] = namespace
        self.cluster.create(
            {"apiVersion": RBAC, "kind": kind, "metadata": metadata, "rules": [rule]}
        )
        self.cluster.create(
            {
                "apiVersion": RBAC,
                "kind": f"{kind}Binding",
                "metadata": metadata,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
                "subjects": list(subjects),
            }
        )

    def review_count(self, resource: kmock.resource) -> int:
        """How many reviews of this kind (``TOKEN_REVIEWS``/``ACCESS_REVIEWS``) were posted."""
        return len(self.posted(resource))

    def posted(self, resource: kmock.resource) -> list[JSON]:
        """The bodies of the reviews of this kind posted so far, oldest first."""
        emulator = self.cluster.emulator
        return self.cluster.call(
            lambda: [request.data for request in emulator[kmock.method.POST, resource]]
        )

    # ------------------------------------------------------------------ the API

    def _install(self) -> None:
        emulator = self.cluster.emulator
        for resource, kind, answer in (
            (TOKEN_REVIEWS, "TokenReview", self._token_review),
            (ACCESS_REVIEWS, "SubjectAccessReview", self._access_review),
        ):
            emulator.register(
                f"{resource.group}/{resource.version}", str(resource.plural), kind, namespaced=False
            )
            emulator._resources[resource].verbs = {"create"}
            emulator[kmock.method.POST, resource] << 201 << answer
            emulator[resource] << _method_not_allowed

    def _caller(self, request: kmock.Request) -> Identity:
        """The identity of the client posting a review (401 if unknown)."""
        header = next((v for k, v in request.headers.items() if k.lower() == "authorization"), "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token == TOKEN:
            return ADMIN
        identity = self.tokens.get(token) if scheme.lower() == "bearer" else None
        if identity is None or API_SERVER_AUDIENCE not in identity.audiences:
            raise api_error(401, "Unauthorized", "Unauthorized")
        return identity

    def _check_caller(self, request: kmock.Request, resource: kmock.resource) -> None:
        caller = self._caller(request)
        attributes = Attributes("create", str(resource.group), str(resource.plural))
        if not self._allows(caller, attributes):
            self._refuse(request, caller, attributes)

    def _authorize(self, request: kmock.Request) -> None:
        """:attr:`ServegateKubernetes.authorize`: 401 or 403 unless RBAC allows it."""
        if not any(k.lower() == "authorization" for k in request.headers):
            return  # kubectl: it sends no credentials to an http:// server (see the module doc)
        caller = self._caller(request)
        verb = rbac_verb(request)
        if verb is None or request.resource is None or "system:masters" in caller.groups:
            return  # discovery and other non-resource URLs; the admin
        group, plural = str(request.resource.group), str(request.resource.plural)
        resource = f"{plural}/{request.subresource}" if request.subresource else plural
        named = verb in {"get", "update", "patch", "delete"}
        attributes = Attributes(
            verb=verb,
            group=group,
            resource=resource,
            namespace=request.namespace or "",
            name=(request.name or "") if named else "",
        )
        if not self._allows(caller, attributes):
            self._refuse(request, caller, attributes)
        if verb == "patch" and self._apply_creates(request):
            # kube-apiserver authorizes an apply that creates the object as a create too.
            creating = Attributes("create", group, resource, request.namespace or "", "")
            if not self._allows(caller, creating):
                self._refuse(request, caller, creating)

        if group == RBAC_GROUP and plural in BINDINGS and verb in {"create", "update", "patch"}:
            self._authorize_binding(request, caller, plural)

    def _allows(self, caller: Identity, attributes: Attributes) -> bool:
        return _rbac(self.cluster.emulator, caller.username, caller.groups, attributes)[0]

    def _refuse(
        self,
        request: kmock.Request,
        caller: Identity,
        attributes: Attributes,
        why: str | None = None,
    ) -> NoReturn:
        """403, worded as kube-apiserver words it; recorded in ``denied``. ``why`` replaces
        the usual "User ... cannot <verb> resource ..." (the escalation check's wording)."""
        self.denied.append((caller.username, attributes))
        assert request.resource is not None
        group, plural = str(request.resource.group), str(request.resource.plural)
        qualified = f"{plural}.{group}" if group else plural
        name = request.name if why else attributes.name
        subject = f'{qualified} "{name}"' if name else qualified
        where = (
            f'in the namespace "{request.namespace}"'
            if request.namespace
            else "at the cluster scope"
        )
        why = why or (
            f'User "{caller.username}" cannot {attributes.verb} resource '
            f'"{attributes.resource}" in API group "{group}" {where}'
        )
        details = {"name": request.name} if request.name else {}
        raise api_error(
            403, "Forbidden", f"{subject} is forbidden: {why}", group=group, kind=plural, **details
        )

    def _apply_creates(self, request: kmock.Request) -> bool:
        """A server-side apply of an object that does not exist yet."""
        content_type = next(
            (v for k, v in request.headers.items() if k.lower() == "content-type"), ""
        )
        if not content_type.startswith("application/apply-patch") or request.resource is None:
            return False
        emulator = self.cluster.emulator
        info = emulator._info(request.resource)
        namespace = request.namespace if info.namespaced else None
        return emulator._live((request.resource, namespace, request.name or "")) is None

    def _authorize_binding(self, request: kmock.Request, caller: Identity, plural: str) -> None:
        """RBAC's escalation check: writing a binding needs ``bind`` on its role."""
        body = request.data if isinstance(request.data, dict) else {}
        ref = body.get("roleRef")
        if not isinstance(ref, dict):  # a patch that leaves roleRef (immutable) alone
            resource = ROLE_BINDINGS if plural == "rolebindings" else CLUSTER_ROLE_BINDINGS
            key = (resource, request.namespace, request.name or "")
            live = self.cluster.emulator._live(key) or {}
            ref = live.get("roleRef") or {}
        kind = str(ref.get("kind") or "")
        attributes = Attributes(
            verb="bind",
            group=RBAC_GROUP,
            resource="roles" if kind == "Role" else "clusterroles",
            namespace=request.namespace or "",
            name=str(ref.get("name") or ""),
        )
        if not self._allows(caller, attributes):
            self._refuse(
                request,
                caller,
                attributes,
                why=f'user "{caller.username}" is attempting to grant RBAC permissions not '
                f'currently held, and has no "bind" on {kind} "{attributes.name}"',
            )

    def _token_review(self, request: kmock.Request) -> JSON:
        self._check_caller(request, TOKEN_REVIEWS)
        body = _review_body(request, "TokenReview")
        spec = body.get("spec") or {}
        token = spec.get("token")
        if not isinstance(token, str) or not token:
            raise api_error(
                422,
                "Invalid",
                "TokenReview.authentication.k8s.io is invalid: spec.token: Required value",
            )
        wanted = list(spec.get("audiences") or [API_SERVER_AUDIENCE])
        identity = self.tokens.get(token)
        status: JSON
        if identity is None:
            status = {"user": {}, "error": "[invalid bearer token, token lookup failed]"}
        elif not (common := [a for a in wanted if a in identity.audiences]):
            status = {
                "user": {},
                "error": f"[invalid bearer token, token audiences {list(identity.audiences)} "
                f"is invalid for the target audiences {wanted}]",
            }
        else:
            status = {"authenticated": True, "user": identity.user_info(), "audiences": common}
        # kube-apiserver echoes the spec (token included) back: clients must not log answers.
        return _answer(body, status)

    def _access_review(self, request: kmock.Request) -> JSON:
        self._check_caller(request, ACCESS_REVIEWS)
        body = _review_body(request, "SubjectAccessReview")
        spec = body.get("spec") or {}
        attributes = spec.get("resourceAttributes")
        if not spec.get("user") and not spec.get("groups"):
            raise api_error(
                422,
                "Invalid",
                'SubjectAccessReview.authorization.k8s.io is invalid: spec.user: Invalid value: "": at least one of user or group must be specified',
            )
        if not isinstance(attributes, dict):
            raise api_error(
                422,
                "Invalid",
                "SubjectAccessReview.authorization.k8s.io is invalid: spec.resourceAttributes: Required value",
            )
        allowed, reason = _rbac(
            self.cluster.emulator,
            str(spec.get("user") or ""),
            tuple(spec.get("groups") or ()),
            Attributes(
                verb=str(attributes.get("verb") or ""),
                group=str(attributes.get("group") or ""),
                resource=str(attributes.get("resource") or ""),
                namespace=str(attributes.get("namespace") or ""),
                name=str(attributes.get("name") or ""),
            ),
        )
        status: JSON = {"allowed": allowed}
        if reason:
            status["reason"] = reason
        return _answer(body, status)


def _method_not_allowed(request: kmock.Request) -> JSON:
    raise api_error(
        405,
        "MethodNotAllowed",
        f"the server does not allow this method on the requested resource ({request.method.value})",
    )


def _review_body(request: kmock.Request, kind: str) -> JSON:
    body = request.data
    if not isinstance(body, dict) or body.get("kind") != kind:
        raise api_error(400, "BadRequest", f"the request body is not a {kind}")
    return body


def _answer(body: JSON, status: JSON) -> JSON:
    return {
        "kind": body["kind"],
        "apiVersion": body.get("apiVersion"),
        "metadata": {"creationTimestamp": None},
        "spec": body.get("spec") or {},
        "status": status,
    }


# --------------------------------------------------------------------------- RBAC


def _objects(emulator: ServegateKubernetes, resource: kmock.resource) -> list[JSON]:
    # On the emulator's loop, between awaits: a consistent read without the lock.
    return [obj for _, obj in emulator._live_objects(resource)]


def _subject_matches(
    subject: Any, binding_namespace: str, user: str, groups: tuple[str, ...]
) -> bool:
    if not isinstance(subject, dict):
        return False
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return bool(name == user)
    if kind == "Group":
        return name in groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return user == f"system:serviceaccount:{namespace}:{name}"
    return False


def _rule_allows(rule: Any, attributes: Attributes) -> bool:
    if not isinstance(rule, dict):
        return False

    def covers(field_name: str, value: str) -> bool:
        values = rule.get(field_name) or []
        return "*" in values or value in values

    names = rule.get("resourceNames") or []
    return (
        covers("verbs", attributes.verb)
        and covers("apiGroups", attributes.group)
        and covers("resources", attributes.resource)
        and (not names or attributes.name in names)
    )


def _rbac(
    emulator: ServegateKubernetes, user: str, groups: tuple[str, ...], attributes: Attributes
) -> tuple[bool, str]:
    """RBAC's decision and, when allowed, its reason (which binding of which role to whom)."""
    if "system:masters" in groups:
        return True, ""
    roles = {
        (r["metadata"].get("namespace"), r["metadata"]["name"]): r
        for r in _objects(emulator, ROLES)
    }
    cluster_roles = {r["metadata"]["name"]: r for r in _objects(emulator, CLUSTER_ROLES)}
    bindings = [("ClusterRoleBinding", b) for b in _objects(emulator, CLUSTER_ROLE_BINDINGS)]
    bindings += [
        ("RoleBinding", b)
        for b in _objects(emulator, ROLE_BINDINGS)
        if attributes.namespace and b["metadata"].get("namespace") == attributes.namespace
    ]
    for binding_kind, binding in bindings:
        namespace = binding["metadata"].get("namespace") or ""
        subject = next(
            (
                s
                for s in binding.get("subjects") or []
                if _subject_matches(s, namespace, user, groups)
            ),
            None,
        )
        if subject is None:
            continue
        ref = binding.get("roleRef") or {}
        role = (
            cluster_roles.get(ref.get("name"))
            if ref.get("kind") == "ClusterRole"
            else roles.get((namespace, ref.get("name")))
        )
        if role is None or (
            binding_kind == "ClusterRoleBinding" and ref.get("kind") != "ClusterRole"
        ):
            continue
        if any(_rule_allows(rule, attributes) for rule in role.get("rules") or []):
            where = (
                f"{binding['metadata']['name']}/{namespace}"
                if namespace
                else binding["metadata"]["name"]
            )
            return True, (
                f'RBAC: allowed by {binding_kind} "{where}" of {ref.get("kind")} '
                f'"{ref.get("name")}" to {subject.get("kind")} "{subject.get("name")}"'
            )
    return False, ""
