"""Render every kustomize overlay with ``kubectl kustomize`` and validate every object.

Built-in kinds are validated (strict: unknown fields are errors) against the schemas of
Kubernetes ``K8S_VERSION`` with kubernetes-validate. The custom resources (KEDA's
ScaledObject, prometheus-operator's ServiceMonitor/PodMonitor) have no schema there and
are checked structurally below, field by field as their CRDs define them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT, gantry_cmd

K8S_VERSION = "1.32.0"
DEPLOY = ROOT / "deploy"
OVERLAYS = ["sim", "gpu"]
CUSTOM = {"ScaledObject", "ServiceMonitor", "PodMonitor"}


def render(overlay: str, tmp: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed (apt-get install kubectl)")
    tree = tmp / "deploy"
    shutil.copytree(DEPLOY, tree)
    gpu = tree / "k8s/overlays/gpu"
    if not (gpu / "secrets.env").exists():  # what an operator does first
        shutil.copy(gpu / "secrets.env.example", gpu / "secrets.env")
    r = subprocess.run(
        [kubectl, "kustomize", str(tree / "k8s/overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def objects(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return render(request.param, tmp_path_factory.mktemp(request.param))


def by_kind(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def test_every_builtin_object_is_valid(objects: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    kinds = set()
    for obj in objects:
        kinds.add(obj["kind"])
        if obj["kind"] in CUSTOM:
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    expected = set(
        "Namespace ServiceAccount Role RoleBinding ConfigMap Secret Service Deployment"
        " StatefulSet PodDisruptionBudget NetworkPolicy".split()
    )
    assert expected | CUSTOM <= kinds


def test_custom_resources_are_well_formed(objects: list[dict[str, Any]]) -> None:
    so = by_kind(objects, "ScaledObject")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    assert spec["scaleTargetRef"]["name"] == by_kind(objects, "Deployment")["metadata"]["name"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert set(trigger["metadata"]) == {"serverAddress", "query", "threshold"}
    assert "gantry_active_requests" in trigger["metadata"]["query"]
    float(trigger["metadata"]["threshold"])  # KEDA wants a number in a string
    sm = by_kind(objects, "ServiceMonitor")
    svc = by_kind(objects, "Service", "gantry-gateway")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    pm = by_kind(objects, "PodMonitor")
    sts = by_kind(objects, "StatefulSet")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    ports = {p["name"] for c in sts["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} <= ports


def test_gateway_drain_fits_in_the_grace_period(objects: list[dict[str, Any]]) -> None:
    dep = by_kind(objects, "Deployment", "gantry-gateway")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    cm = by_kind(objects, "ConfigMap", _config_name(objects))
    shutdown = yaml.safe_load(cm["data"]["gantry.yaml"])["shutdown"]
    needed = int(pre_stop[1]) + shutdown["readiness_delay_s"] + shutdown["grace_s"]
    assert needed < pod["terminationGracePeriodSeconds"] <= needed + 15
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


def _config_name(objects: list[dict[str, Any]]) -> str:
    return next(
        o["metadata"]["name"]
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("gantry-config-")
    )


def test_rendered_gantry_yaml_passes_gantry_config_check(
    objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    cm = by_kind(objects, "ConfigMap", _config_name(objects))
    path = tmp_path / "gantry.yaml"
    path.write_text(cm["data"]["gantry.yaml"])
    r = subprocess.run(
        gantry_cmd("config", "check", str(path)), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert "kubernetes discovery" in r.stdout, r.stdout  # not the embedded default
    k8s = yaml.safe_load(path.read_text())["engines"]["discovery"]["kubernetes"]
    # the slices watched are the engines' headless Service's, in the gateway's namespace
    svc = next(
        o for o in objects if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None"
    )
    assert k8s["label_selector"] == f"kubernetes.io/service-name={svc['metadata']['name']}"
    assert k8s["namespace"] == svc["metadata"]["namespace"]
    assert k8s["port"] in [p["port"] for p in svc["spec"]["ports"]]


def test_only_the_gateway_reaches_engines(objects: list[dict[str, Any]]) -> None:
    np = by_kind(objects, "NetworkPolicy", "gantry-engine-ingress")
    assert np["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "engine"}
    sources = [f for rule in np["spec"]["ingress"] for f in rule["from"]]
    pods = [f["podSelector"]["matchLabels"] for f in sources if "podSelector" in f]
    assert pods == [{"app.kubernetes.io/component": "gateway"}]


def test_discovery_rbac(objects: list[dict[str, Any]]) -> None:
    role = by_kind(objects, "Role")
    rules = {(g, r): set(rule["verbs"]) for rule in role["rules"]
             for g in rule["apiGroups"] for r in rule["resources"]}  # fmt: skip
    assert rules[("discovery.k8s.io", "endpointslices")] == {"get", "list", "watch"}
    assert rules[("", "pods")] == {"get", "list", "watch"}
    dep = by_kind(objects, "Deployment")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "gantry-gateway"


def test_dashboards_ship_in_a_configmap(objects: list[dict[str, Any]]) -> None:
    cm = next(o for o in objects if o["metadata"]["name"].startswith("gantry-dashboards"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(cm["data"]) == {p.name for p in (DEPLOY / "grafana/dashboards").glob("*.json")}


def test_gpu_overlay_asks_for_gpus_shm_and_a_model_cache(tmp_path: Path) -> None:
    sts = by_kind(render("gpu", tmp_path), "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["args"][0] == "engine"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["dshm"] == "/dev/shm"
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["model-cache"]
