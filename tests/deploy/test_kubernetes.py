"""The Kubernetes manifests: built as kustomize builds them, validated offline, and consistent.

Core kinds are validated against the Kubernetes OpenAPI schemas shipped by the
``kubernetes-validate`` package, in strict mode (unknown fields fail). The Prometheus
Operator's kinds (ServiceMonitor, PrometheusRule) are validated by Node.js against the
schemas compiled from the operator's CRDs (``@kubernetes-models/prometheus-operator``,
installed in ``tests/deploy/crd-schemas`` by ``npm ci``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest
import yaml

from guestload.cli.flags import build_parser, settings_from_args
from guestload.queries.cpustats import CpuStatsOptions
from guestload.queries.load import LoadOptions
from guestload.sources.kubevirt_sockets import SOCKET_PLACEHOLDER

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZATION_DIR = ROOT / "deploy" / "kubernetes"
CRD_SCHEMAS = Path(__file__).parent / "crd-schemas"
KUBERNETES_VERSION = "1.33.0"
"""The oldest Kubernetes the manifests promise to work with."""

NAME_LABELS = {"app.kubernetes.io/name": "guestload", "app.kubernetes.io/part-of": "guestload"}
HANDLED_KUSTOMIZE_KEYS = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
CLUSTER_SCOPED = {"Namespace"}

Object = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Deployment:
    """One kustomization users apply, the PrometheusRule it holds and the flags it adds."""

    directory: Path
    prometheusrule: Path
    extra_flags: tuple[str, ...] = ()


DEPLOYMENTS = {
    "kubevirt-before-1.6.4": Deployment(
        KUSTOMIZATION_DIR, ROOT / "monitoring/kubernetes/prometheusrule.yaml"
    ),
    "kubevirt-1.6.4-or-later": Deployment(
        KUSTOMIZATION_DIR / "kubevirt-1.6.4-or-later",
        ROOT / "monitoring/kubernetes/kubevirt/prometheusrule.yaml",
        ("--no-collector.load",),
    ),
}


def kustomize_build(directory: Path) -> list[Object]:
    """The objects ``kubectl apply -k directory`` would apply, for the keys used here."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unhandled = set(kustomization) - HANDLED_KUSTOMIZE_KEYS
    assert not unhandled, f"{directory}: teach kustomize_build about {unhandled}"
    objects: list[Object] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        if path.is_dir():
            assert (path / "kustomization.yaml").is_file(), (
                f"{resource} is a directory without kustomization.yaml; kustomize cannot use it"
            )
            objects += kustomize_build(path)
        else:
            assert path.is_relative_to(directory.resolve()), (
                f"{resource}: kustomize loads files only from inside the kustomization's folder"
            )
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch in kustomization.get("patches", []):
        _apply_json6902(objects, patch["target"], yaml.safe_load(patch["patch"]))
    namespace = kustomization.get("namespace")
    for obj in objects:
        if namespace and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace
    for image in kustomization.get("images", []):
        for container in _containers(objects):
            name, _, _tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    return objects


def _apply_json6902(objects: list[Object], target: Object, operations: list[Object]) -> None:
    """Apply a JSON patch (add and replace only) to the objects *target* selects."""
    assert set(target) <= {"kind", "name"}, f"teach kustomize_build target {target}"
    chosen = [
        obj
        for obj in objects
        if obj["kind"] == target.get("kind", obj["kind"])
        and obj["metadata"]["name"] == target.get("name", obj["metadata"]["name"])
    ]
    assert chosen, f"patch target {target} selects nothing"
    for obj in chosen:
        for operation in operations:
            assert operation["op"] in {"add", "replace"}, f"teach kustomize_build {operation}"
            *parents, last = operation["path"].removeprefix("/").split("/")
            node: Any = obj
            for key in parents:
                node = node[int(key)] if isinstance(node, list) else node[key]
            if isinstance(node, list) and last == "-":
                node.append(operation["value"])
            elif isinstance(node, list):
                node.insert(int(last), operation["value"])
            else:
                node[last] = operation["value"]


def _containers(objects: list[Object]) -> Iterator[Object]:
    for obj in objects:
        if obj["kind"] == "DaemonSet":
            yield from obj["spec"]["template"]["spec"]["containers"]


@pytest.fixture(scope="module", params=sorted(DEPLOYMENTS))
def deployment(request: pytest.FixtureRequest) -> Deployment:
    chosen: Deployment = DEPLOYMENTS[request.param]
    return chosen


@pytest.fixture(scope="module")
def objects(deployment: Deployment) -> list[Object]:
    return kustomize_build(deployment.directory)


def only(objects: list[Object], kind: str) -> Object:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def validate_custom_resources(resources: list[Object]) -> dict[str, list[str]]:
    """``kind/name`` -> schema errors, from the prometheus-operator schemas (Node.js)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run scripts/install-system-deps")
    if not (CRD_SCHEMAS / "node_modules" / "@kubernetes-models").is_dir():
        pytest.fail(f"prometheus-operator schemas missing: run npm ci --prefix {CRD_SCHEMAS}")
    result = subprocess.run(
        [node, "validate.mjs"],
        cwd=CRD_SCHEMAS,
        input=json.dumps(resources),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {f"{r['kind']}/{r['name']}": r["errors"] for r in json.loads(result.stdout)}


def test_the_kustomization_holds_the_exporter_and_the_shipped_rules(
    objects: list[Object], deployment: Deployment
) -> None:
    kinds = sorted(obj["kind"] for obj in objects)
    assert kinds == [
        "DaemonSet",
        "Namespace",
        "PrometheusRule",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    shipped = yaml.safe_load(deployment.prometheusrule.read_text())
    rule = only(objects, "PrometheusRule")
    assert rule["spec"] == shipped["spec"], "the rules come from the generated file, unchanged"
    assert all(
        obj["metadata"].get("namespace") == "guestload"
        for obj in objects
        if obj["kind"] != "Namespace"
    )


def test_core_objects_match_the_kubernetes_schemas_strictly(objects: list[Object]) -> None:
    core = [obj for obj in objects if not obj["apiVersion"].startswith("monitoring.coreos.com")]
    assert len(core) == 4
    for obj in core:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_rejects_an_unknown_field(objects: list[Object]) -> None:
    daemonset = json.loads(json.dumps(only(objects, "DaemonSet")))
    daemonset["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBERNETES_VERSION, strict=True)


def test_operator_objects_match_the_prometheus_operator_schemas(
    objects: list[Object], deployment: Deployment
) -> None:
    custom = [obj for obj in objects if obj["apiVersion"] == "monitoring.coreos.com/v1"]
    errors = validate_custom_resources(custom)
    rule = yaml.safe_load(deployment.prometheusrule.read_text())["metadata"]["name"]
    assert errors == {f"PrometheusRule/{rule}": [], "ServiceMonitor/guestload": []}


def test_the_operator_schema_check_rejects_a_broken_service_monitor(
    objects: list[Object],
) -> None:
    monitor = json.loads(json.dumps(only(objects, "ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["interval"] = "thirty seconds"
    del monitor["spec"]["selector"]
    (errors,) = validate_custom_resources([monitor]).values()
    assert errors
    assert "selector" in errors[0]


def test_every_object_carries_the_recommended_labels(objects: list[Object]) -> None:
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "guestload", obj["kind"]
        if obj["kind"] != "PrometheusRule":
            assert NAME_LABELS.items() <= labels.items(), obj["kind"]


def test_the_daemonset_runs_the_exporter_as_its_flags_say(
    objects: list[Object], deployment: Deployment
) -> None:
    pod = only(objects, "DaemonSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = build_parser().parse_args(container["args"])
    settings = settings_from_args(args)
    assert args.command == "serve"
    assert settings.identity_mode == "kubevirt"
    assert SOCKET_PLACEHOLDER in settings.socket_uri_template
    assert not settings.vcpu_collector
    # Beside KubeVirt >= 1.6.4 virt-handler exports the load; guest CPU times stay.
    load = settings.query_options.of(LoadOptions)
    assert load.enabled is ("--no-collector.load" not in deployment.extra_flags)
    assert set(deployment.extra_flags) <= set(container["args"])
    assert settings.query_options.of(CpuStatsOptions).enabled
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    covering = [path for path in mounts if settings.socket_glob.startswith(path + "/")]
    assert covering, f"no volume mount holds {settings.socket_glob}"
    assert mounts[covering[0]]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[covering[0]]["name"]]["hostPath"]["path"] == covering[0]
    (port,) = container["ports"]
    assert port["containerPort"] == settings.listen_address.port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    (node_name,) = [e for e in container["env"] if e["name"] == "NODE_NAME"]
    assert node_name["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert container["resources"]["requests"].keys() == {"cpu", "memory"}
    assert "memory" in container["resources"]["limits"]
    assert {"operator": "Exists"} in pod["tolerations"]
    assert pod["automountServiceAccountToken"] is False


def test_the_daemonset_asks_for_no_more_privilege_than_socket_access(
    objects: list[Object],
) -> None:
    pod = only(objects, "DaemonSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["DAC_OVERRIDE"]}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key), key


def test_service_and_monitor_select_the_pods_and_name_instances_by_node(
    objects: list[Object], deployment: Deployment
) -> None:
    pod_labels = only(objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    service = only(objects, "Service")
    monitor = only(objects, "ServiceMonitor")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    # The exporter's namespace label is the VM's; the Operator's target label must not win.
    assert endpoint["honorLabels"] is True
    assert {
        "action": "replace",
        "sourceLabels": ["__meta_kubernetes_pod_node_name"],
        "targetLabel": "instance",
    } in endpoint["relabelings"]
    # The Prometheus Operator names the job after the Service; the shipped rules select it.
    rules = deployment.prometheusrule.read_text()
    assert f'job="{service["metadata"]["name"]}"' in rules
