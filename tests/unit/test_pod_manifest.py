"""The Kubernetes backend's pod, as data: hardening, limits, placement, ownership, refusals.
(The same pod as the real API server stores it: tests/kubernetes/test_engine.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from agent_sandbox.config import (
    ConfigError,
    KubernetesSettings,
    LimitSettings,
    Settings,
    Toleration,
    load_settings,
)
from agent_sandbox.engine.kubernetes import (
    OWNER_ANNOTATION,
    OWNER_LABEL,
    ROLE_LABEL,
    owner_digest,
    pod_manifest,
)
from agent_sandbox.engine.launch import BASE_ENV, launcher_command
from agent_sandbox.engine.spec import ContainerShape, PackageMount
from agent_sandbox.errors import EngineError
from agent_sandbox.models import Limits
from tests.helpers import ROOT

LIMITS = Limits(**{name: getattr(LimitSettings(), name) for name in Limits.model_fields})
SHAPE = ContainerShape.of("agent-sandbox:minimal", LIMITS)
OWNER = "host/pidns:4026531836:4242"


def manifest(shape: ContainerShape = SHAPE, **settings: Any) -> dict[str, Any]:
    return pod_manifest(
        shape, OWNER, KubernetesSettings(**settings), "registry/agent-sandbox:minimal", "pod-1"
    )


def test_the_pod_runs_the_launcher_waiting_on_stdin_as_uid_1000() -> None:
    (container,) = manifest()["spec"]["containers"]
    assert container["command"] == launcher_command(relay_output=True)
    assert container["image"] == "registry/agent-sandbox:minimal"
    assert (container["stdin"], container["stdinOnce"], container["tty"]) == (True, True, False)
    assert {item["name"]: item["value"] for item in container["env"]} == BASE_ENV
    assert container["workingDir"] == "/work"


def test_hardening_comes_from_the_pod_spec_alone() -> None:
    pod = manifest()
    spec = pod["spec"]
    (container,) = spec["containers"]
    user = {
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert spec["securityContext"] == user
    assert container["securityContext"] == {
        **user,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert (spec["automountServiceAccountToken"], spec["enableServiceLinks"]) == (False, False)
    assert (spec["hostNetwork"], spec["hostPID"], spec["hostIPC"]) == (False, False, False)
    assert spec["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] == 4200
    assert all(set(volume) == {"name", "emptyDir"} for volume in spec["volumes"])  # no host paths


def test_limits_become_resources_and_memory_backed_volumes() -> None:
    spec = manifest(cpu_request=0.25)["spec"]
    (container,) = spec["containers"]
    assert container["resources"] == {
        "limits": {"cpu": "1000m", "memory": "1024Mi"},
        "requests": {"cpu": "250m", "memory": "1024Mi"},
    }
    assert spec["volumes"] == [
        {"name": "work", "emptyDir": {"medium": "Memory", "sizeLimit": "512Mi"}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "128Mi"}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]
    assert [(m["name"], m["mountPath"]) for m in container["volumeMounts"]] == [
        ("work", "/work"),
        ("tmp", "/tmp"),
        ("shm", "/dev/shm"),
    ]


def test_no_shm_volume_when_the_limit_is_zero() -> None:
    shape = ContainerShape.of("agent-sandbox:minimal", LIMITS.model_copy(update={"shm_mib": 0}))
    assert [volume["name"] for volume in manifest(shape)["spec"]["volumes"]] == ["work", "tmp"]


def test_a_cpu_request_above_the_limit_is_held_to_the_limit() -> None:
    shape = ContainerShape.of("agent-sandbox:minimal", LIMITS.model_copy(update={"cpus": 0.5}))
    (container,) = manifest(shape, cpu_request=2.0)["spec"]["containers"]
    assert container["resources"]["requests"]["cpu"] == "500m"


def test_labels_name_the_owner_and_the_annotation_keeps_it_whole() -> None:
    metadata = manifest()["metadata"]
    assert metadata["labels"][ROLE_LABEL] == "sandbox"
    assert metadata["labels"][OWNER_LABEL] == owner_digest(OWNER)
    assert len(owner_digest(OWNER)) <= 63  # a valid label value
    assert owner_digest(OWNER).isalnum()
    assert metadata["annotations"] == {OWNER_ANNOTATION: OWNER}
    assert "ownerReferences" not in metadata


def test_a_server_in_the_cluster_owns_its_sandbox_pods() -> None:
    metadata = manifest(server_pod_name="server-abc", server_pod_uid="1234-5678")["metadata"]
    assert metadata["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": "server-abc", "uid": "1234-5678"}
    ]


def test_placement_and_runtime_class() -> None:
    spec = manifest(
        runtime_class="gvisor",
        node_selector={"sandbox": "true"},
        tolerations=[
            Toleration(key="sandbox", value="true", effect="NoSchedule"),
            Toleration(operator="Exists"),
        ],
        image_pull_policy="Never",
    )["spec"]
    assert spec["runtimeClassName"] == "gvisor"
    assert spec["nodeSelector"] == {"sandbox": "true"}
    assert spec["tolerations"] == [
        {"key": "sandbox", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
        {"operator": "Exists"},
    ]
    assert spec["containers"][0]["imagePullPolicy"] == "Never"


def test_nothing_of_placement_is_set_unless_configured() -> None:
    spec = manifest()["spec"]
    assert not {"runtimeClassName", "nodeSelector", "tolerations"} & set(spec)


def test_a_docker_network_is_refused_with_what_to_do() -> None:
    shape = ContainerShape.of("agent-sandbox:minimal", LIMITS, network="bridge")
    with pytest.raises(EngineError, match=r"names a Docker network.*leave engine.network empty"):
        manifest(shape)


def test_per_run_packages_are_refused_with_what_to_do() -> None:
    shape = ContainerShape.of("agent-sandbox:minimal", LIMITS, packages=PackageMount("/cache/run", 512))
    with pytest.raises(EngineError, match="image profile that has the packages"):
        manifest(shape)


def test_the_pod_deadline_must_cover_a_start_a_warm_wait_an_install_and_the_longest_run() -> None:
    off = {"enabled": False}
    with pytest.raises(ValueError, match=r"kubernetes.max_pod_lifetime_s must be at least 4200"):
        Settings(engine={"backend": "kubernetes"}, packages=off, kubernetes={"max_pod_lifetime_s": 600})  # type: ignore[arg-type]
    Settings(engine={"backend": "docker"}, kubernetes={"max_pod_lifetime_s": 600})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sections", "words"),
    [
        ({"engine": {"network": "bridge"}}, "engine.network is a Docker setting"),
        ({"engine": {"runtime": "runsc"}}, "engine.runtime is a Docker setting"),
        ({"packages": {"enabled": True}}, "per-run requirements are not offered on Kubernetes yet"),
    ],
)
def test_docker_only_settings_with_the_kubernetes_backend_are_config_errors(
    sections: dict[str, dict[str, Any]], words: str
) -> None:
    chosen = {"engine": {"backend": "kubernetes"}, "packages": {"enabled": False}}
    for section, values in sections.items():
        chosen[section] = {**chosen.get(section, {}), **values}
    with pytest.raises(ValueError, match=words):
        Settings(**chosen)  # type: ignore[arg-type]


def test_images_may_only_be_named_for_known_profiles() -> None:
    with pytest.raises(ValueError, match="unknown image profile 'gpu'"):
        KubernetesSettings(images={"gpu": "registry/gpu:1"})


def test_the_kubernetes_profile_loads() -> None:
    settings = load_settings(ROOT / "configs" / "kubernetes.toml")
    assert settings.engine.backend == "kubernetes"
    assert settings.packages.enabled is False  # per-run requirements are Docker's, for now


def test_an_unknown_backend_is_an_error_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_SANDBOX_ENGINE__BACKEND", "nomad")
    with pytest.raises(ConfigError, match=r"engine.backend: Input should be 'docker', 'oci' or 'kubernetes'"):
        load_settings()
