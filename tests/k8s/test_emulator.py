"""The in-memory Kubernetes API against the real clients: the ``kubernetes`` client, kubectl, kopf.

Every wait is a watch with a server-side timeout (no sleeps as synchronisation).
"""

from __future__ import annotations

import base64
import contextlib
import json
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest
import yaml
from kopf.testing import KopfRunner
from kubernetes import watch
from kubernetes.client import ApiClient, AppsV1Api, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from tests.k8s.emulator import EmulatedCluster, running_kubernetes, strategic_merge_patch

pytestmark = pytest.mark.timeout(30)

GROUP, VERSION, PLURAL = "servegate.io", "v1alpha1", "servingendpoints"
JSON = dict[str, Any]


def configmap(name: str, data: dict[str, str] | None = None, **meta: Any) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, **meta},
        "data": data or {},
    }


def serving_endpoint(name: str, model: str = "gpt-4o", **meta: Any) -> JSON:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ServingEndpoint",
        "metadata": {"name": name, **meta},
        "spec": {"config": {"served_entities": [{"external_model": {"name": model}}]}},
    }


def deployment(name: str) -> JSON:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "gateway",
                            "image": "servegate:1",
                            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                            "ports": [{"containerPort": 8080, "name": "http"}],
                        },
                        {"name": "sidecar", "image": "sidecar:1"},
                    ],
                    "volumes": [{"name": "config", "configMap": {"name": "cfg"}}],
                },
            },
        },
    }


def status_of(exc_info: pytest.ExceptionInfo[ApiException]) -> tuple[int, str]:
    body = json.loads(exc_info.value.body)
    return int(exc_info.value.status), str(body["reason"])


def wait_for(
    list_fn: Callable[..., Any],
    *args: Any,
    until: Callable[[str, JSON], bool],
    timeout: int = 10,
    **kwargs: Any,
) -> JSON:
    """Watch until ``until(type, object)`` holds: the current state first, then the changes.

    With ``resource_version=``, the events since that version instead of the current state.
    """
    stream = watch.Watch()
    for event in stream.stream(list_fn, *args, timeout_seconds=timeout, **kwargs):
        obj = event["object"]
        raw = obj if isinstance(obj, dict) else stream._api_client.sanitize_for_serialization(obj)
        if until(event["type"], raw):
            stream.stop()
            return raw
    raise TimeoutError(f"no matching event within {timeout}s")


# --------------------------------------------------------------------------- python client


def test_configmap_lifecycle(core: CoreV1Api) -> None:
    created, status, _ = core.create_namespaced_config_map_with_http_info(
        "default", configmap("cm", {"a": "1", "b": "2"}, labels={"tier": "x"})
    )
    assert status == 201
    meta = created.metadata
    assert meta.uid and meta.creation_timestamp and meta.generation == 1
    rv1 = int(meta.resource_version)

    listing = core.list_namespaced_config_map("default")
    assert listing.kind == "ConfigMapList" and listing.api_version == "v1"
    assert [item.metadata.name for item in listing.items] == ["cm"]
    assert int(listing.metadata.resource_version) >= rv1

    merged = core.patch_namespaced_config_map(
        "cm",
        "default",
        {"data": {"a": None, "c": "3"}},
        _content_type="application/merge-patch+json",
    )
    assert merged.data == {"b": "2", "c": "3"}  # null deletes (RFC 7386)
    rv2 = int(merged.metadata.resource_version)
    assert rv2 > rv1

    strategic = core.patch_namespaced_config_map(
        "cm", "default", {"metadata": {"labels": {"new": "y"}}}
    )
    assert strategic.metadata.labels == {"tier": "x", "new": "y"}
    assert int(strategic.metadata.resource_version) > rv2

    same = core.patch_namespaced_config_map("cm", "default", {"data": {"b": "2"}})
    assert same.metadata.resource_version == strategic.metadata.resource_version  # no-op write

    current = core.read_namespaced_config_map("cm", "default")
    current.data = {"only": "this"}
    replaced = core.replace_namespaced_config_map("cm", "default", current)
    assert replaced.data == {"only": "this"}
    assert (
        replaced.metadata.uid == meta.uid
        and replaced.metadata.creation_timestamp == meta.creation_timestamp
    )

    stale = core.read_namespaced_config_map("cm", "default")
    stale.metadata.resource_version = str(rv1)
    with pytest.raises(ApiException) as conflict:
        core.replace_namespaced_config_map("cm", "default", stale)
    assert status_of(conflict) == (409, "Conflict")

    with pytest.raises(ApiException) as exists:
        core.create_namespaced_config_map("default", configmap("cm"))
    assert status_of(exists) == (409, "AlreadyExists")

    core.delete_namespaced_config_map("cm", "default")
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("cm", "default")
    assert status_of(missing) == (404, "NotFound")


def test_secret_lifecycle(core: CoreV1Api) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds"},
        "type": "Opaque",
        "stringData": {"api_key": "sk-123"},
    }
    created = core.create_namespaced_secret("default", secret)
    assert created.data == {"api_key": base64.b64encode(b"sk-123").decode()}
    assert created.string_data is None

    patched = core.patch_namespaced_secret("creds", "default", {"stringData": {"other": "x"}})
    assert set(patched.data) == {"api_key", "other"}

    patched.data = {"only": base64.b64encode(b"y").decode()}
    replaced = core.replace_namespaced_secret("creds", "default", patched)
    assert set(replaced.data) == {"only"}

    patched.metadata.resource_version = created.metadata.resource_version
    with pytest.raises(ApiException) as conflict:
        core.replace_namespaced_secret("creds", "default", patched)
    assert status_of(conflict) == (409, "Conflict")

    core.delete_namespaced_secret("creds", "default")
    assert core.list_namespaced_secret("default").items == []


def test_deployment_patches_and_generation(apps: AppsV1Api, k8s_api: ApiClient) -> None:
    created = apps.create_namespaced_deployment("default", deployment("gw"))
    assert created.metadata.generation == 1

    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "gateway",
                            "image": "servegate:2",
                            "env": [{"name": "B", "value": "20"}],
                        },
                        {"name": "sidecar", "$patch": "delete"},
                    ],
                    "volumes": [{"name": "secrets", "secret": {"secretName": "s"}}],
                }
            }
        }
    }
    patched = k8s_api.sanitize_for_serialization(
        apps.patch_namespaced_deployment("gw", "default", patch)
    )
    pod = patched["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["gateway"]
    gateway = pod["containers"][0]
    assert gateway["image"] == "servegate:2"
    assert gateway["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "20"}]
    assert gateway["ports"] == [{"containerPort": 8080, "name": "http"}]
    assert [v["name"] for v in pod["volumes"]] == ["config", "secrets"]
    assert patched["metadata"]["generation"] == 2

    # A JSON patch (the client sends lists as application/json-patch+json).
    scaled = apps.patch_namespaced_deployment(
        "gw", "default", [{"op": "replace", "path": "/spec/replicas", "value": 3}]
    )
    assert scaled.spec.replicas == 3 and scaled.metadata.generation == 3

    # Metadata and status do not bump the generation; the main endpoint ignores status.
    labelled = apps.patch_namespaced_deployment(
        "gw", "default", {"metadata": {"labels": {"x": "y"}}}
    )
    assert labelled.metadata.generation == 3
    ignored = apps.patch_namespaced_deployment("gw", "default", {"status": {"replicas": 9}})
    assert ignored.status is None or ignored.status.replicas is None
    rollout = {"status": {"observedGeneration": 3, "replicas": 3, "readyReplicas": 3}}
    status = apps.patch_namespaced_deployment_status("gw", "default", rollout)
    assert status.status.ready_replicas == 3 and status.metadata.generation == 3
    assert status.spec.replicas == 3

    current = apps.read_namespaced_deployment("gw", "default")
    current.spec.template.spec.containers[0].image = "servegate:3"
    replaced = apps.replace_namespaced_deployment("gw", "default", current)
    assert replaced.metadata.generation == 4 and replaced.status.ready_replicas == 3
    with pytest.raises(ApiException) as conflict:  # "current" still has the previous RV
        apps.replace_namespaced_deployment("gw", "default", current)
    assert status_of(conflict) == (409, "Conflict")

    with pytest.raises(ApiException) as failed:  # kopf relies on 422 for a failed "test"
        apps.patch_namespaced_deployment(
            "gw", "default", [{"op": "test", "path": "/metadata/resourceVersion", "value": "1"}]
        )
    assert status_of(failed) == (422, "Invalid")

    apps.delete_namespaced_deployment("gw", "default")
    assert apps.list_namespaced_deployment("default").items == []


def test_serving_endpoint_status_subresource(custom: CustomObjectsApi) -> None:
    body = serving_endpoint("sep")
    body["status"] = {"phase": "Forged"}
    created, status, _ = custom.create_namespaced_custom_object_with_http_info(
        GROUP, VERSION, "default", PLURAL, body
    )
    assert status == 201
    assert "status" not in created and created["metadata"]["generation"] == 1

    with_status = custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        "default",
        PLURAL,
        "sep",
        {"status": {"phase": "Ready", "observedGeneration": 1}, "spec": {"ignored": True}},
    )
    assert with_status["status"] == {"phase": "Ready", "observedGeneration": 1}
    assert "ignored" not in with_status["spec"]
    assert with_status["metadata"]["generation"] == 1

    changed = custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        "default",
        PLURAL,
        "sep",
        {"spec": {"rate_limits": [{"calls": 5}]}, "status": {"phase": "Hacked"}},
    )
    assert changed["spec"]["rate_limits"] == [{"calls": 5}]
    assert changed["status"]["phase"] == "Ready"  # the main endpoint ignores status
    assert changed["metadata"]["generation"] == 2

    with pytest.raises(ApiException) as unsupported:
        custom.api_client.call_api(
            f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}/sep",
            "PATCH",
            header_params={"Content-Type": "application/strategic-merge-patch+json"},
            body={"spec": {}},
            auth_settings=["BearerToken"],
        )
    assert status_of(unsupported) == (415, "UnsupportedMediaType")


def test_watch_replays_from_a_resource_version(core: CoreV1Api) -> None:
    since = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("default", configmap("w", {"v": "1"}))
    core.patch_namespaced_config_map("w", "default", {"data": {"v": "2"}})
    core.delete_namespaced_config_map("w", "default")

    events = []
    stream = watch.Watch()
    for event in stream.stream(
        core.list_namespaced_config_map, "default", resource_version=since, timeout_seconds=5
    ):
        events.append((event["type"], event["object"].data))
        if len(events) == 3:
            stream.stop()
    assert events == [("ADDED", {"v": "1"}), ("MODIFIED", {"v": "2"}), ("DELETED", {"v": "2"})]


def test_live_watch_with_selectors(core: CoreV1Api) -> None:
    core.create_namespaced_config_map("default", configmap("first", labels={"app": "sg"}))
    received: queue.Queue[tuple[str, str]] = queue.Queue()
    stream = watch.Watch()

    def consume() -> None:
        for event in stream.stream(
            core.list_namespaced_config_map,
            "default",
            label_selector="app in (sg, other)",
            timeout_seconds=10,
        ):
            received.put((event["type"], event["object"].metadata.name))
            if (event["type"], event["object"].metadata.name) == ("DELETED", "first"):
                stream.stop()  # in this thread: stop() from another one breaks the socket

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    assert received.get(timeout=5) == ("ADDED", "first")  # the initial state: the stream is live
    core.create_namespaced_config_map("default", configmap("ignored", labels={"app": "no"}))
    core.create_namespaced_config_map("default", configmap("second", labels={"app": "other"}))
    core.patch_namespaced_config_map("second", "default", {"metadata": {"labels": {"app": "no"}}})
    core.patch_namespaced_config_map("ignored", "default", {"metadata": {"labels": {"app": "sg"}}})
    assert [received.get(timeout=5) for _ in range(3)] == [
        ("ADDED", "second"),
        ("DELETED", "second"),  # it stopped matching the selector
        ("ADDED", "ignored"),  # it started matching
    ]
    core.delete_namespaced_config_map("first", "default")  # the consumer stops on it
    assert received.get(timeout=5) == ("DELETED", "first")
    thread.join(timeout=5)
    assert not thread.is_alive()

    by_name = core.list_namespaced_config_map("default", field_selector="metadata.name=ignored")
    assert [cm.metadata.name for cm in by_name.items] == ["ignored"]
    by_labels = core.list_namespaced_config_map("default", label_selector="app!=sg,app")
    assert [cm.metadata.name for cm in by_labels.items] == ["second"]
    with pytest.raises(ApiException) as invalid:
        core.list_namespaced_config_map("default", label_selector="app in sg")
    assert status_of(invalid) == (400, "BadRequest")


def test_finalizers_and_owner_garbage_collection(core: CoreV1Api, custom: CustomObjectsApi) -> None:
    def owned_configmap(name: str, *owners: JSON) -> JSON:
        refs = [
            {
                "apiVersion": owner["apiVersion"],
                "kind": owner["kind"],
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
            }
            for owner in owners
        ]
        return configmap(name, {"x": "y"}, ownerReferences=refs)

    owner = custom.create_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, serving_endpoint("owner", finalizers=["test/hold"])
    )
    core.create_namespaced_config_map("default", owned_configmap("child", owner))

    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "owner")
    deleting = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "owner")
    assert deleting["metadata"]["deletionTimestamp"]
    assert core.read_namespaced_config_map("child", "default")  # the owner still exists

    with pytest.raises(ApiException) as forbidden:
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            "default",
            PLURAL,
            "owner",
            {"metadata": {"finalizers": ["test/hold", "new"]}},
        )
    assert status_of(forbidden) == (422, "Invalid")

    custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "owner", {"metadata": {"finalizers": None}}
    )
    with pytest.raises(ApiException):
        custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "owner")
    assert core.list_namespaced_config_map("default").items == []  # garbage-collected

    first, second = (
        custom.create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, serving_endpoint(name)
        )
        for name in ["first", "second"]
    )
    core.create_namespaced_config_map("default", owned_configmap("shared", first, second))
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "first")
    assert core.read_namespaced_config_map("shared", "default")  # one owner is left
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "second")
    assert core.list_namespaced_config_map("default").items == []

    orphaning = custom.create_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, serving_endpoint("orphaning")
    )
    core.create_namespaced_config_map("default", owned_configmap("orphan", orphaning))
    custom.delete_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "orphaning", propagation_policy="Orphan"
    )
    orphan = core.read_namespaced_config_map("orphan", "default")
    assert orphan.metadata.owner_references is None


def test_namespaces(core: CoreV1Api) -> None:
    with pytest.raises(ApiException) as missing:
        core.create_namespaced_config_map("team", configmap("cm"))
    assert status_of(missing) == (404, "NotFound")

    namespace = core.create_namespace({"metadata": {"name": "team"}})
    assert namespace.status.phase == "Active"
    assert "team" in {ns.metadata.name for ns in core.list_namespace().items}
    core.create_namespaced_config_map("team", configmap("cm"))
    core.create_namespaced_config_map("team", configmap("held", finalizers=["test/hold"]))

    core.delete_namespace("team")
    assert core.read_namespace("team").status.phase == "Terminating"
    assert [cm.metadata.name for cm in core.list_namespaced_config_map("team").items] == ["held"]
    core.patch_namespaced_config_map("held", "team", {"metadata": {"finalizers": None}})
    assert (
        core.list_config_map_for_all_namespaces(field_selector="metadata.namespace=team").items
        == []
    )
    with pytest.raises(ApiException):
        core.read_namespace("team")


def test_server_side_apply_remembers_each_manager(k8s_api: ApiClient, core: CoreV1Api) -> None:
    def apply(obj: JSON, manager: str) -> tuple[JSON, int]:
        data, status, _ = k8s_api.call_api(
            "/api/v1/namespaces/default/configmaps/applied",
            "PATCH",
            query_params=[("fieldManager", manager), ("force", "true")],
            header_params={
                "Content-Type": "application/apply-patch+yaml",
                "Accept": "application/json",
            },
            body=obj,
            response_types_map={200: "object", 201: "object"},
            auth_settings=["BearerToken"],
            _return_http_data_only=False,
        )
        return data, status

    created, status = apply(configmap("applied", {"a": "1", "b": "2"}), "operator")
    assert status == 201 and created["data"] == {"a": "1", "b": "2"}
    core.patch_namespaced_config_map("applied", "default", {"data": {"patched": "yes"}})
    _, status = apply(configmap("applied", {"other": "1"}), "someone-else")
    assert status == 200

    again, status = apply(configmap("applied", {"a": "10"}), "operator")
    assert status == 200
    # "b" was applied by the operator before and not now: removed. The others stay.
    assert again["data"] == {"a": "10", "patched": "yes", "other": "1"}
    same, _ = apply(configmap("applied", {"a": "10"}), "operator")
    assert same["metadata"]["resourceVersion"] == again["metadata"]["resourceVersion"]


def test_kmock_reactions_inject_faults(k8s: EmulatedCluster, core: CoreV1Api) -> None:
    core.create_namespaced_config_map("default", configmap("cm", {"v": "1"}))
    configmaps = kmock.resource("v1/configmaps")
    k8s.call(lambda: k8s.emulator[kmock.method.PATCH, configmaps] << 503)
    with pytest.raises(ApiException) as failed:
        core.patch_namespaced_config_map("cm", "default", {"data": {"v": "2"}})
    assert failed.value.status == 503
    assert core.read_namespaced_config_map("cm", "default").data == {"v": "1"}  # not applied
    stored = k8s.get("v1/configmaps", "default", "cm")
    assert stored is not None and stored["data"] == {"v": "1"}
    history = k8s.call(lambda: k8s.emulator.objects["v1/configmaps", "default", "cm"].history)
    assert len(history) == 1  # kmock's object views work: one version, never patched


def test_rbac_calls_from_the_request_log(k8s: EmulatedCluster, core: CoreV1Api) -> None:
    before = k8s.request_count()
    core.create_namespaced_config_map("default", configmap("cm"))
    core.read_namespaced_config_map("cm", "default")
    core.list_namespaced_config_map("default")
    core.patch_namespaced_config_map("cm", "default", {"data": {"k": "v"}})
    core.delete_namespaced_config_map("cm", "default")
    core.list_namespace(watch=False)
    expected = {
        ("", "configmaps", "create"),
        ("", "configmaps", "get"),
        ("", "configmaps", "list"),
        ("", "configmaps", "patch"),
        ("", "configmaps", "delete"),
        ("", "namespaces", "list"),
    }
    assert k8s.rbac_calls(since=before) == expected
    assert k8s.rbac_calls(since=before, user_agent="OpenAPI-Generator") == expected
    assert k8s.rbac_calls(since=before, user_agent="kubectl") == set()


@pytest.mark.parametrize(
    ("target", "patch", "expected"),
    [
        ({"m": {"a": 1, "b": 2}}, {"m": {"a": None, "c": 3}}, {"m": {"b": 2, "c": 3}}),
        ({"m": {"a": 1, "b": 2}}, {"m": {"$patch": "replace", "c": 3}}, {"m": {"c": 3}}),
        ({"m": {"a": 1}, "k": 1}, {"m": {"$patch": "delete"}}, {"k": 1}),
        (
            {"m": {"a": 1, "b": 2}},
            {"m": {"$retainKeys": ["b", "c"], "c": 3}},
            {"m": {"b": 2, "c": 3}},
        ),
        ({"finalizers": ["a", "b"]}, {"finalizers": ["c", "a"]}, {"finalizers": ["a", "b", "c"]}),
        (
            {"finalizers": ["a", "b"]},
            {"$deleteFromPrimitiveList/finalizers": ["a"]},
            {"finalizers": ["b"]},
        ),
        ({"args": ["a", "b"]}, {"args": ["c"]}, {"args": ["c"]}),  # no merge key: replaced
        (
            {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
            {
                "env": [{"name": "B", "value": "3"}],
                "$setElementOrder/env": [{"name": "B"}, {"name": "A"}],
            },
            {"env": [{"name": "B", "value": "3"}, {"name": "A", "value": "1"}]},
        ),
        (
            {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]},
            {"ports": [{"port": 443, "$patch": "delete"}, {"port": 8080, "name": "alt"}]},
            {"ports": [{"port": 80, "name": "http"}, {"port": 8080, "name": "alt"}]},
        ),
        (
            {"volumes": [{"name": "a"}]},
            {"volumes": [{"$patch": "replace"}, {"name": "b"}]},
            {"volumes": [{"name": "b"}]},
        ),
    ],
)
def test_strategic_merge_patch(target: JSON, patch: JSON, expected: JSON) -> None:
    assert strategic_merge_patch(target, patch) == expected


# --------------------------------------------------------------------------- kubectl


def test_kubectl(k8s: EmulatedCluster, tmp_path: Path) -> None:
    resources = k8s.kubectl("api-resources", "--api-group=servegate.io", "-o", "wide").stdout
    assert "servingendpoints" in resources and "sep" in resources and "ServingEndpoint" in resources

    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(
        yaml.safe_dump_all([configmap("app", {"k": "v1"}), serving_endpoint("chat")])
    )
    applied = k8s.kubectl("apply", "-f", str(manifest)).stdout
    assert (
        "configmap/app created" in applied
        and "servingendpoint.servegate.io/chat created" in applied
    )

    manifest.write_text(
        yaml.safe_dump_all([configmap("app", {"k": "v2"}), serving_endpoint("chat", model="gpt-5")])
    )
    applied = k8s.kubectl("apply", "-f", str(manifest)).stdout
    assert (
        "configmap/app configured" in applied
        and "servingendpoint.servegate.io/chat configured" in applied
    )
    cm = json.loads(k8s.kubectl("get", "configmap", "app", "-o", "json").stdout)
    assert cm["data"] == {"k": "v2"}
    assert "kubectl.kubernetes.io/last-applied-configuration" in cm["metadata"]["annotations"]

    manifest.write_text(yaml.safe_dump(deployment("gw")))
    assert "serverside-applied" in k8s.kubectl("apply", "--server-side", "-f", str(manifest)).stdout
    assert "serverside-applied" in k8s.kubectl("apply", "--server-side", "-f", str(manifest)).stdout

    k8s.kubectl("patch", "sep", "chat", "--type", "merge", "-p", '{"spec": {"extra": 1}}')
    k8s.kubectl(
        "patch",
        "sep",
        "chat",
        "--subresource=status",
        "--type",
        "merge",
        "-p",
        '{"status": {"phase": "Ready"}}',
    )
    k8s.kubectl("patch", "deployment", "gw", "-p", '{"spec": {"replicas": 2}}')  # strategic
    sep = json.loads(k8s.kubectl("get", "servingendpoints", "chat", "-o", "json").stdout)
    assert sep["spec"]["extra"] == 1 and sep["status"] == {"phase": "Ready"}
    assert sep["metadata"]["generation"] == 3
    assert k8s.kubectl("get", "deploy", "gw", "-o", "jsonpath={.spec.replicas}").stdout == "2"

    table = k8s.kubectl("get", "sep").stdout
    assert table.split() == ["NAME", "AGE", "chat", table.split()[-1]]
    names = k8s.kubectl("get", "cm,sep,deploy", "-o", "name", "--field-selector=metadata.name!=x")
    assert names.stdout.split() == [
        "configmap/app",
        "servingendpoint.servegate.io/chat",
        "deployment.apps/gw",
    ]
    k8s.kubectl("wait", "--for=jsonpath={.status.phase}=Ready", "sep/chat", "--timeout=5s")

    assert 'deployment.apps "gw" deleted' in k8s.kubectl("delete", "-f", str(manifest)).stdout
    deleted = k8s.kubectl("delete", "sep/chat", "configmap/app").stdout
    assert (
        'servingendpoint.servegate.io "chat" deleted' in deleted
        and 'configmap "app" deleted' in deleted
    )
    assert k8s.kubectl("get", "cm,sep,deploy", "-o", "name").stdout == ""
    missing = k8s.kubectl("get", "sep", "chat", check=False)
    assert missing.returncode == 1 and "NotFound" in missing.stderr


def test_crd_objects_register_their_resources(k8s: EmulatedCluster, tmp_path: Path) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {
                "plural": "widgets",
                "singular": "widget",
                "kind": "Widget",
                "shortNames": ["wd"],
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": {"type": "object"}},
                }
            ],
        },
    }
    (tmp_path / "crd.yaml").write_text(yaml.safe_dump(crd))
    k8s.kubectl("apply", "-f", str(tmp_path / "crd.yaml"))
    k8s.kubectl("wait", "--for=condition=Established", "crd/widgets.example.com", "--timeout=5s")
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    k8s.kubectl("apply", "-f", "-", input=yaml.safe_dump(widget))
    assert k8s.kubectl("get", "wd", "-o", "name").stdout.strip() == "widget.example.com/w"

    k8s.kubectl("delete", "crd", "widgets.example.com")
    assert k8s.get("example.com/v1/widgets", "default", "w") is None
    assert "widgets" not in k8s.kubectl("api-resources").stdout


# --------------------------------------------------------------------------- kopf


@pytest.fixture
def kopf_registry(k8s: EmulatedCluster, monkeypatch: pytest.MonkeyPatch) -> kopf.OperatorRegistry:
    """A private registry (not kopf's global one) logging in with the emulator's kubeconfig."""
    monkeypatch.setenv("KUBECONFIG", str(k8s.kubeconfig))
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_kubeconfig(**kwargs)

    return registry


def test_kopf_operator(
    k8s: EmulatedCluster,
    kopf_registry: kopf.OperatorRegistry,
    core: CoreV1Api,
    custom: CustomObjectsApi,
) -> None:
    seen: queue.Queue[tuple[str, Any]] = queue.Queue()
    registry = kopf_registry

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    def created(body: kopf.Body, name: str, patch: kopf.Patch, **_: Any) -> None:
        child = configmap(
            f"{name}-config",
            {"model": body["spec"]["config"]["served_entities"][0]["external_model"]["name"]},
        )
        kopf.adopt(child, owner=body)
        core.create_namespaced_config_map(child["metadata"]["namespace"], child)
        kopf.info(body, reason="Created", message=f"configured {name}")
        patch.status["phase"] = "Ready"
        patch.status["observedGeneration"] = body["metadata"]["generation"]

    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    def updated(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        seen.put(("update", body["spec"].get("extra")))
        patch.status["observedGeneration"] = body["metadata"]["generation"]

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    def deleted(name: str, **_: Any) -> None:
        seen.put(("delete", name))

    @kopf.timer(GROUP, VERSION, PLURAL, interval=0.2, registry=registry)
    def ticked(patch: kopf.Patch, **_: Any) -> None:
        patch.status["ticked"] = True

    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = 10
    args = ["run", "--all-namespaces", "--standalone"]
    with KopfRunner(args, registry=registry, settings=settings, timeout=10) as runner:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, serving_endpoint("chat")
        )
        ready = wait_for(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            "default",
            PLURAL,
            field_selector="metadata.name=chat",
            until=lambda _, obj: (
                obj.get("status", {}).get("phase") == "Ready"
                and obj["status"].get("ticked") is True
            ),
        )
        assert ready["status"]["observedGeneration"] == 1
        assert ready["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
        child = core.read_namespaced_config_map("chat-config", "default")
        assert child.data == {"model": "gpt-4o"}
        assert child.metadata.owner_references[0].uid == ready["metadata"]["uid"]
        wait_for(
            core.list_namespaced_event,
            "default",
            until=lambda _, ev: (
                ev["reason"] == "Created" and ev["involvedObject"]["name"] == "chat"
            ),
        )

        custom.patch_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, "chat", {"spec": {"extra": 42}}
        )
        assert seen.get(timeout=10) == ("update", 42)
        wait_for(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            "default",
            PLURAL,
            field_selector="metadata.name=chat",
            until=lambda _, obj: obj.get("status", {}).get("observedGeneration") == 2,
        )

        # An event (not a state) is awaited: watch from before the deletion, not from now.
        since = core.list_namespaced_config_map("default").metadata.resource_version
        custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "chat")
        wait_for(
            core.list_namespaced_config_map,
            "default",
            field_selector="metadata.name=chat-config",
            resource_version=since,
            until=lambda type_, _: type_ == "DELETED",
        )
        assert seen.get(timeout=10) == ("delete", "chat")
        assert (
            custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["items"] == []
        )

    assert runner.exception is None
    calls = k8s.rbac_calls(user_agent="kopf")
    assert {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        (GROUP, PLURAL, "list"),
        (GROUP, PLURAL, "watch"),
        (GROUP, PLURAL, "patch"),
        (GROUP, f"{PLURAL}/status", "patch"),
        ("", "events", "create"),
    } <= calls, calls


def test_running_kubernetes_reports_server_errors(tmp_path: Path) -> None:
    stack = contextlib.ExitStack()
    cluster = stack.enter_context(running_kubernetes(tmp_path))
    cluster.call(lambda: cluster.emulator["/boom"] << ZeroDivisionError)
    core = CoreV1Api(cluster.api_client())
    with pytest.raises(ApiException) as failed:
        core.api_client.call_api("/boom", "GET", auth_settings=["BearerToken"])
    assert failed.value.status == 500
    with pytest.raises(AssertionError, match="failed while serving"):
        stack.close()
