"""``gateway.env``, ``gateway.records.dsnSecret`` and ``gateway.caBundle``
(SERVEGATE_GATEWAY_ENV, SERVEGATE_GATEWAY_RECORDS_DSN_*, SERVEGATE_GATEWAY_CA_BUNDLE_*): the
rendered gateway gets the plain variables after the operator's own, SERVEGATE_RECORDS_DSN
through a ``secretKeyRef`` (the DSN itself in no rendered object), and the CA bundle's key
mounted read-only and named by SERVEGATE_CA_BUNDLE. The rendered pod, run by the stand-in
kubelet, reaches a provider on its real hostname only through the egress proxy its
environment names, trusting the provider's private CA from the mounted ConfigMap, and
writes its usage rows to PostgreSQL with the DSN from the Secret."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import kubernetes_validate
import pytest
import trustme

from servegate.simulators.openai import create_openai_app
from servegate.spec import ServingEndpointSpec
from servegate_operator.render.config import render_endpoint
from servegate_operator.render.gateway import (
    CA_BUNDLE_PATH,
    render_control_plane_binding,
    render_deployment,
    render_hpa,
    render_pdb,
    render_review_binding,
    render_service,
    render_service_account,
)
from servegate_operator.settings import CaBundle, GatewayDefaults, SecretKey, settings_from_env
from tests.conftest import BackgroundLoop, GatewayProcess, http_chat
from tests.egress import EgressProxy, serve_tls
from tests.operator.kubelet import Pod
from tests.operator.test_pod_runs import secret, spec_document
from tests.records.pg import PostgresServer

KUBE_VERSIONS = ("1.27", "1.30", "1.33")
PROXY = {"HTTPS_PROXY": "http://proxy.corp.example:3128", "NO_PROXY": ".svc,.cluster.local"}
DSN_PASSWORD = "pg-DSN-CANARY-7f3e"
GATEWAY = GatewayDefaults(
    env=PROXY,
    records_dsn_secret=SecretKey("servegate-records", "dsn"),
    ca_bundle=CaBundle("configMap", "corp-ca", "ca.crt"),
)
PROVIDER_HOST = "api.openai.example"
KEY = "sk-env-pod-key"
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


def container_of(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def chat_spec(base: str, *, usage_tracking: bool = False) -> ServingEndpointSpec:
    document = spec_document(base, {"openai_api_key": "{{secrets/keys/openai}}"})
    if usage_tracking:
        document["ai_gateway"] = {"usage_tracking_config": {"enabled": True}}
    return ServingEndpointSpec.model_validate(document)


def config_map(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


# ------------------------------------------------------------------------------- render


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_renders_valid_kubernetes_objects(version: str) -> None:
    chat = render_endpoint("chat", "team-a", chat_spec("https://api.openai.com/v1"))
    for gateway in (
        GATEWAY,
        GatewayDefaults(
            auth_mode="kubernetes",
            tls_secret="gateway-tls",
            redis_url="redis://redis.cache.svc:6379/0",
            ca_bundle=CaBundle("secret", "corp-ca", "bundle.pem"),
            env={"http_proxy": "http://10.0.0.5:3128"},
        ),
    ):
        deployment = render_deployment("team-a", [chat], gateway)
        kubernetes_validate.validate(deployment, version, strict=True)


def test_the_container_gets_the_proxy_the_dsn_reference_and_the_bundle() -> None:
    container = container_of(render_deployment("team-a", [], GATEWAY))
    assert container["env"] == [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HOME", "value": "/tmp"},
        {
            "name": "SERVEGATE_RECORDS_DSN",
            # Not optional: without it the rows (and inference tables' bodies) would go to
            # the log instead of the database.
            "valueFrom": {"secretKeyRef": {"name": "servegate-records", "key": "dsn"}},
        },
        {"name": "SERVEGATE_CA_BUNDLE", "value": "/etc/servegate/ca/ca-bundle.pem"},
        {"name": "HTTPS_PROXY", "value": "http://proxy.corp.example:3128"},
        {"name": "NO_PROXY", "value": ".svc,.cluster.local"},
    ]
    assert CA_BUNDLE_PATH == "/etc/servegate/ca/ca-bundle.pem"
    assert {"name": "ca-bundle", "mountPath": "/etc/servegate/ca", "readOnly": True} in container[
        "volumeMounts"
    ]
    # The args are what they are without these settings: the pod shape changes only there.
    plain = container_of(render_deployment("team-a", [], GatewayDefaults()))
    assert container["args"] == plain["args"]


def test_the_bundle_comes_from_a_config_map_or_a_secret_key() -> None:
    volumes = {
        v["name"]: v
        for v in render_deployment("team-a", [], GATEWAY)["spec"]["template"]["spec"]["volumes"]
    }
    assert volumes["ca-bundle"] == {
        "name": "ca-bundle",
        "configMap": {  # not optional: the gateway could not start its provider client
            "name": "corp-ca",
            "items": [{"key": "ca.crt", "path": "ca-bundle.pem"}],
            "defaultMode": 0o444,
        },
    }
    from_secret = GatewayDefaults(ca_bundle=CaBundle("secret", "corp-ca-secret", "bundle.pem"))
    pod = render_deployment("team-a", [], from_secret)["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "ca-bundle"]
    assert volume == {
        "name": "ca-bundle",
        "secret": {
            "secretName": "corp-ca-secret",
            "items": [{"key": "bundle.pem", "path": "ca-bundle.pem"}],
            "defaultMode": 0o444,
        },
    }
    (container,) = pod["containers"]
    assert {"name": "SERVEGATE_CA_BUNDLE", "value": CA_BUNDLE_PATH} in container["env"]
    assert "SERVEGATE_RECORDS_DSN" not in {e["name"] for e in container["env"]}


def test_without_them_nothing_changes() -> None:
    pod = render_deployment("team-a", [], GatewayDefaults())["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert [e["name"] for e in container["env"]] == ["PYTHONUNBUFFERED", "HOME"]
    assert "ca-bundle" not in {v["name"] for v in pod["volumes"]}
    assert "/etc/servegate/ca" not in {m["mountPath"] for m in container["volumeMounts"]}


def test_the_dsn_is_in_no_rendered_object(tmp_path: Path) -> None:
    """The operator only ever names the Secret: nothing it renders for the namespace holds
    the DSN, while the pod (kubelet) resolves it from the Secret when the container starts."""
    chat = render_endpoint("chat", "team-a", chat_spec("https://api.openai.com/v1"))
    gateway = GatewayDefaults(
        replicas=2,
        hpa_max_replicas=4,
        auth_mode="kubernetes",
        control_plane="kubernetes",
        records_dsn_secret=SecretKey("servegate-records", "dsn"),
        ca_bundle=CaBundle("secret", "corp-ca", "ca.crt"),
        env=PROXY,
    )
    rendered = [
        chat.config_map,
        render_deployment("team-a", [chat], gateway),
        render_service("team-a", gateway),
        render_pdb("team-a", gateway),
        render_hpa("team-a", gateway),
        render_service_account("team-a", gateway),
        render_review_binding("team-a", gateway),
        render_control_plane_binding("team-a", gateway),
    ]
    assert all(obj is not None for obj in rendered)
    text = json.dumps(rendered)
    assert DSN_PASSWORD not in text and "postgresql://" not in text
    dsn = f"postgresql://servegate:{DSN_PASSWORD}@pg.db.svc:5432/usage"
    objects = {
        ("ConfigMap", chat.config_map["metadata"]["name"]): chat.config_map,
        ("Secret", "servegate-records"): secret("servegate-records", {"dsn": dsn}),
        ("Secret", "corp-ca"): secret("corp-ca", {"ca.crt": "PEM"}),
    }
    pod = Pod(render_deployment("team-a", [chat], gateway), objects, tmp_path / "pod")
    assert pod.env["SERVEGATE_RECORDS_DSN"] == dsn


def test_without_the_dsn_secret_or_the_bundle_the_pod_does_not_start(tmp_path: Path) -> None:
    deployment = render_deployment("team-a", [], GATEWAY)
    bundle = config_map("corp-ca", {"ca.crt": "PEM"})
    dsn = secret("servegate-records", {"dsn": "postgresql://pg/usage"})
    with pytest.raises(FileNotFoundError, match="ConfigMap corp-ca is not optional"):
        Pod(deployment, {("Secret", "servegate-records"): dsn}, tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="Secret servegate-records key dsn is not optional"):
        Pod(deployment, {("ConfigMap", "corp-ca"): bundle}, tmp_path / "b")
    other_key = secret("servegate-records", {"url": "postgresql://pg/usage"})
    with pytest.raises(FileNotFoundError, match="key dsn is not optional"):
        Pod(
            deployment,
            {("ConfigMap", "corp-ca"): bundle, ("Secret", "servegate-records"): other_key},
            tmp_path / "c",
        )


# ----------------------------------------------------------------------------- settings


def test_settings_from_env() -> None:
    gateway = settings_from_env(
        {
            "SERVEGATE_GATEWAY_ENV": json.dumps(
                [{"name": k, "value": v} for k, v in PROXY.items()]
            ),
            "SERVEGATE_GATEWAY_RECORDS_DSN_SECRET": "servegate-records",
            "SERVEGATE_GATEWAY_RECORDS_DSN_KEY": "dsn",
            "SERVEGATE_GATEWAY_CA_BUNDLE_CONFIG_MAP": "corp-ca",
            "SERVEGATE_GATEWAY_CA_BUNDLE_KEY": "ca.crt",
        }
    ).gateway
    assert list(gateway.env.items()) == list(PROXY.items())  # in order
    assert gateway.records_dsn_secret == SecretKey("servegate-records", "dsn")
    assert gateway.ca_bundle == CaBundle("configMap", "corp-ca", "ca.crt")
    assert render_deployment("team-a", [], gateway) == render_deployment("team-a", [], GATEWAY)
    from_secret = settings_from_env({"SERVEGATE_GATEWAY_CA_BUNDLE_SECRET": "corp-ca"}).gateway
    assert from_secret.ca_bundle == CaBundle("secret", "corp-ca", "ca.crt")  # the default key
    dsn = settings_from_env({"SERVEGATE_GATEWAY_RECORDS_DSN_SECRET": "records"}).gateway
    assert dsn.records_dsn_secret == SecretKey("records", "dsn")  # the default key
    for off in ({}, {"SERVEGATE_GATEWAY_ENV": "[]", "SERVEGATE_GATEWAY_RECORDS_DSN_SECRET": ""}):
        defaults = settings_from_env(off).gateway
        assert (defaults.env, defaults.records_dsn_secret, defaults.ca_bundle) == ({}, None, None)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SERVEGATE_GATEWAY_ENV": "HTTPS_PROXY=x"}, "SERVEGATE_GATEWAY_ENV must be JSON"),
        ({"SERVEGATE_GATEWAY_ENV": '{"A": "1"}'}, "must be a JSON list of {name, value}"),
        ({"SERVEGATE_GATEWAY_ENV": '[{"name": "A"}]'}, "each item must be {name, value}"),
        (
            {"SERVEGATE_GATEWAY_ENV": '[{"name": "A", "value": "1", "valueFrom": {}}]'},
            "each item must be {name, value}",
        ),
        (
            {"SERVEGATE_GATEWAY_ENV": '[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]'},
            "SERVEGATE_GATEWAY_ENV lists A twice",
        ),
        (
            {
                "SERVEGATE_GATEWAY_ENV": json.dumps(
                    [{"name": "SERVEGATE_RECORDS_DSN", "value": "postgresql://u:p@pg/db"}]
                )
            },
            "SERVEGATE_RECORDS_DSN: names starting with SERVEGATE_ are the gateway's own "
            "settings, which come from their typed values (gateway.records.dsnSecret",
        ),
        (
            {"SERVEGATE_GATEWAY_ENV": '[{"name": "HOME", "value": "/home"}]'},
            "HOME is set by the operator",
        ),
        (
            {"SERVEGATE_GATEWAY_ENV": '[{"name": "1PROXY", "value": "x"}]'},
            "'1PROXY' is not an environment variable name",
        ),
        (
            {"SERVEGATE_GATEWAY_ENV": '[{"name": "PORT", "value": 3128}]'},
            "the value of PORT must be a string",
        ),
        (
            {"SERVEGATE_GATEWAY_RECORDS_DSN_SECRET": "Records_DSN"},
            "SERVEGATE_GATEWAY_RECORDS_DSN_SECRET must be a name (a DNS subdomain)",
        ),
        (
            {
                "SERVEGATE_GATEWAY_RECORDS_DSN_SECRET": "records",
                "SERVEGATE_GATEWAY_RECORDS_DSN_KEY": "a/dsn",
            },
            "SERVEGATE_GATEWAY_RECORDS_DSN_KEY must be a data key",
        ),
        (
            {"SERVEGATE_GATEWAY_CA_BUNDLE_CONFIG_MAP": "Corp CA"},
            "SERVEGATE_GATEWAY_CA_BUNDLE_CONFIG_MAP must be a name",
        ),
        (
            {"SERVEGATE_GATEWAY_CA_BUNDLE_SECRET": "ca", "SERVEGATE_GATEWAY_CA_BUNDLE_KEY": ".."},
            "SERVEGATE_GATEWAY_CA_BUNDLE_KEY must be a data key",
        ),
        (
            {"SERVEGATE_GATEWAY_CA_BUNDLE_SECRET": "ca", "SERVEGATE_GATEWAY_CA_BUNDLE_KEY": "a b"},
            "SERVEGATE_GATEWAY_CA_BUNDLE_KEY must be a data key",
        ),
        (
            {
                "SERVEGATE_GATEWAY_CA_BUNDLE_CONFIG_MAP": "corp-ca",
                "SERVEGATE_GATEWAY_CA_BUNDLE_SECRET": "corp-ca",
            },
            "are both set: the CA bundle comes from one ConfigMap or one Secret",
        ),
    ],
)
def test_bad_settings_are_refused(env: dict[str, str], message: str) -> None:
    """The operator refuses at start what would render a broken gateway or put a secret
    setting in a plain value (the chart's schema and templates refuse them first)."""
    with pytest.raises(ValueError, match=re.escape(message)):
        settings_from_env(env)


def test_the_checks_hold_for_settings_built_in_code() -> None:
    with pytest.raises(ValueError, match="SERVEGATE_CA_BUNDLE: names starting with SERVEGATE_"):
        GatewayDefaults(env={"SERVEGATE_CA_BUNDLE": "/etc/ssl/corp.pem"})
    with pytest.raises(ValueError, match="PYTHONUNBUFFERED is set by the operator"):
        GatewayDefaults(env={"PYTHONUNBUFFERED": "0"})
    with pytest.raises(ValueError, match="RECORDS_DSN_SECRET must be a name"):
        GatewayDefaults(records_dsn_secret=SecretKey("", "dsn"))
    with pytest.raises(ValueError, match="CA_BUNDLE_SECRET must be a name"):
        GatewayDefaults(ca_bundle=CaBundle("secret", "-ca", "ca.crt"))
    for key in (".ca.crt", "ca..crt", "CA_bundle-1.pem"):
        GatewayDefaults(ca_bundle=CaBundle("configMap", "ca", key))
    for key in (".", "..", "..ca", "", "k" * 254):
        with pytest.raises(ValueError, match="CA_BUNDLE_KEY must be a data key"):
            GatewayDefaults(ca_bundle=CaBundle("configMap", "ca", key))


# ------------------------------------------------------------------------- the pod runs


class Network:
    """A provider on its real hostname, over TLS from a private CA, reachable only through
    an egress proxy (tests/egress.py)."""

    def __init__(self, loop: BackgroundLoop) -> None:
        self.loop = loop
        self.ca = trustme.CA()
        self.runner, port = loop.run(
            serve_tls(create_openai_app(api_keys={KEY}), self.ca, PROVIDER_HOST)
        )
        self.proxy = EgressProxy({f"{PROVIDER_HOST}:443": port})
        self.proxy_url = loop.run(self.proxy.start())

    def close(self) -> None:
        self.loop.run(self.proxy.close())
        self.loop.run(self.runner.cleanup())


@pytest.fixture(scope="module")
def network(background_loop: BackgroundLoop) -> Iterator[Network]:
    network = Network(background_loop)
    yield network
    network.close()


async def usage_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM servegate.endpoint_usage WHERE endpoint_name = 'chat'"
            )
        )
    except asyncpg.UndefinedTableError:
        return 0
    finally:
        await conn.close()


def test_the_rendered_pod_goes_through_the_proxy_trusts_the_bundle_and_records(
    tmp_path: Path,
    network: Network,
    postgres: PostgresServer,
    background_loop: BackgroundLoop,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = background_loop.run
    for name in PROXY_VARIABLES:  # the pod's environment is its own, not this process's
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    chat = render_endpoint(
        "chat", "team-a", chat_spec(f"https://{PROVIDER_HOST}/v1", usage_tracking=True)
    )
    gateway = GatewayDefaults(
        env={"HTTPS_PROXY": network.proxy_url, "NO_PROXY": ".svc,.cluster.local"},
        records_dsn_secret=SecretKey("servegate-records", "dsn"),
        ca_bundle=CaBundle("configMap", "corp-ca", "ca.crt"),
    )
    deployment = render_deployment("team-a", [chat], gateway)
    # trust auth: any password is accepted, so the DSN carries one, as a real one would.
    dsn = postgres.dsn.replace("postgres@", f"postgres:{DSN_PASSWORD}@", 1)
    objects: dict[tuple[str, str], dict[str, Any]] = {
        ("ConfigMap", chat.config_map["metadata"]["name"]): chat.config_map,
        ("Secret", "keys"): secret("keys", {"openai": KEY}),
        ("ConfigMap", "corp-ca"): config_map(
            "corp-ca", {"ca.crt": network.ca.cert_pem.bytes().decode(), "other.crt": "unused"}
        ),
        ("Secret", "servegate-records"): secret("servegate-records", {"dsn": dsn}),
    }
    assert DSN_PASSWORD not in json.dumps([deployment, chat.config_map])
    pod = Pod(deployment, objects, tmp_path / "pod")
    bundle_dir = pod.mounts["/etc/servegate/ca"]
    assert pod.env["SERVEGATE_CA_BUNDLE"] == str(bundle_dir / "ca-bundle.pem")
    assert (bundle_dir / "ca-bundle.pem").read_bytes() == network.ca.cert_pem.bytes()
    assert not (bundle_dir / "other.crt").exists()  # the one key only
    assert pod.env["SERVEGATE_RECORDS_DSN"] == dsn
    process = GatewayProcess(pod.args, tmp_path / "pod.log", env=pod.env, port_zero=False)
    try:
        assert run(http_chat(process.url, "chat"))[0] == 200
        # The provider's hostname resolves nowhere: the request went through the proxy, as
        # TLS (verified against the mounted bundle) inside the tunnel.
        tunnels = network.proxy.tunnels
        assert tunnels and all(t.target == f"{PROVIDER_HOST}:443" for t in tunnels)
        assert all(t.carried_tls for t in tunnels) and not network.proxy.refused
        deadline = time.monotonic() + 15
        while run(usage_rows(postgres.dsn)) < 1:
            assert time.monotonic() < deadline, "no usage row reached the records database"
            time.sleep(0.1)
    finally:
        process.stop()
    assert DSN_PASSWORD not in process.logs()
