"""Static checks of the Kubernetes manifests in boot/k8s: they need no cluster, only the files.

They hold every object to the Kubernetes OpenAPI schemas that kubernetes-validate ships (strict:
an unknown field is an error, as under kubectl's strict field validation), the KEDA objects and
the kustomizations to the focused schemas in boot/k8s/schemas, render the overlays as kustomize
does (and, where kubectl is installed, as kubectl's own kustomize does), and keep the manifests in
step with what they run: the fields, queues, ports and deadlines of `config.Settings`, the `tripq`
CLI, the routes the probes call, and the Dockerfiles' images, variants and users.
"""

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import typer.main
import yaml
from pydantic import SecretStr

from config import Settings
from tests.deploy.test_containers import (
    COMPOSE,
    RedisStart,
    compose_command_words,
    load_compose,
    parse_dockerfile,
    redis_options,
    redis_start,
    validator_of,
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "boot" / "k8s"
BASE = K8S / "base"
OVERLAYS = {"gpu": K8S / "gpu", "scale-to-zero": K8S / "scale-to-zero"}
SCHEMAS = K8S / "schemas"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
NAMESPACE = "tripq"

# The oldest Kubernetes the manifests are written for (docs/operating.md), and the newest one known.
KUBERNETES_VERSIONS = ("1.29", str(kubernetes_validate.latest_version()))

# The tripq Deployments, each with its container, and the Dockerfile of each one's image.
DEPLOYMENTS = {"tripq-api": "api", "tripq-worker": "worker", "tripq-grpc": "grpc"}
IMAGES = {"tripq-api": "api", "tripq-worker": "worker", "tripq-grpc": "api"}
DOCKERFILES = {
    "api": ROOT / "boot" / "api.Dockerfile",
    "worker": ROOT / "boot" / "worker.Dockerfile",
}
# gunicorn's drain (graceful_timeout) and the workers' visibility timeout both give a task
# REQUEST_TIMEOUT_MAX_S plus this much.
DRAIN_MARGIN_S = 5.0
# An exec probe that starts the `tripq` CLI: 2-3 s of imports on an idle core, more when throttled.
TRIPQ_PROBE_MIN_TIMEOUT_S = 10
# Settings whose values are secrets: never in a ConfigMap or a manifest, only in a Secret.
SECRET_SETTINGS = frozenset(
    {"redis_url", "celery_broker_url", "celery_result_backend"}
    | {name for name, field in Settings.model_fields.items() if field.annotation is SecretStr}
)

# Settings that name the pod itself, from the downward API: they may differ between Deployments.
POD_OWN_SETTINGS = frozenset({"worker_metrics_host"})
# What the downward API gives the fields the manifests read, in these tests.
DOWNWARD_API = {"status.podIP": "10.244.1.7"}

Manifest = dict[str, Any]


# --- Reading manifests, and rendering kustomizations as kustomize does ---


def load_documents(path: Path) -> list[Manifest]:
    """Read the YAML documents of a file, empty ones dropped."""
    documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert all(isinstance(d, dict) for d in documents), f"{path.name}: not YAML mappings"
    return documents


def load_kustomization(directory: Path) -> Manifest:
    """Read a directory's kustomization.yaml."""
    (document,) = load_documents(directory / "kustomization.yaml")
    return document


def resolve_pointer(path: str) -> list[str]:
    """Split a JSON pointer (RFC 6901) into its unescaped tokens."""
    assert path.startswith("/"), f"not a JSON pointer: {path!r}"
    return [token.replace("~1", "/").replace("~0", "~") for token in path[1:].split("/")]


def apply_json_patch(document: Manifest, operations: list[dict[str, Any]]) -> None:
    """Apply the add, replace and remove operations of a JSON patch (RFC 6902) in place."""
    for operation in operations:
        *parents, last = resolve_pointer(operation["path"])
        node: Any = document
        for token in parents:
            node = node[int(token)] if isinstance(node, list) else node[token]
        op = operation["op"]
        assert op in {"add", "replace", "remove"}, f"unsupported JSON patch op {op!r}"
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if op == "add":
                node.insert(index, copy.deepcopy(operation["value"]))
            elif op == "replace":
                node[index] = copy.deepcopy(operation["value"])
            else:
                del node[index]
        else:
            assert op == "add" or last in node, f"{op} of a missing member: {operation['path']}"
            if op == "remove":
                del node[last]
            else:
                node[last] = copy.deepcopy(operation["value"])


def patch_targets(target: dict[str, str], document: Manifest) -> bool:
    """Tell whether a kustomize patch target selects a document."""
    group, _, version = document["apiVersion"].rpartition("/")
    actual = {
        "group": group,
        "version": version,
        "kind": document["kind"],
        "name": document["metadata"]["name"],
    }
    return all(actual.get(key) == value for key, value in target.items())


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """Split an image reference into its name, tag and digest (`name[:tag][@digest]`)."""
    reference, _, digest = image.partition("@")
    name, colon, tag = reference.rpartition(":")
    if not colon or "/" in tag:  # no tag: that colon was a registry's port
        return reference, None, digest or None
    return name, tag, digest or None


def set_images(documents: list[Manifest], images: list[dict[str, str]]) -> None:
    """Apply a kustomization's `images:` in place: each container image whose name an entry
    names gets that entry's newName, and its newTag or digest (a digest wins over a tag)."""

    def containers(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in {"containers", "initContainers"} and isinstance(value, list):
                    yield from value
                else:
                    yield from containers(value)
        elif isinstance(node, list):
            for item in node:
                yield from containers(item)

    for container in containers(documents):
        name, tag, digest = split_image(container["image"])
        for entry in images:
            if entry["name"] != name:
                continue
            new_name = entry.get("newName", name)
            if entry.get("digest"):
                container["image"] = f"{new_name}@{entry['digest']}"
            elif entry.get("newTag"):
                container["image"] = f"{new_name}:{entry['newTag']}"
            else:
                kept = (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
                container["image"] = new_name + kept
            break


def render(directory: Path) -> list[Manifest]:
    """Build a kustomization: its resources (files or other kustomizations), then its patches
    and its images applied, in kustomize's order."""
    kustomization = load_kustomization(directory)
    documents: list[Manifest] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        documents += render(path) if path.is_dir() else load_documents(path)
    for patch in kustomization.get("patches", []):
        operations = yaml.safe_load((directory / patch["path"]).read_text(encoding="utf-8"))
        assert isinstance(operations, list), f"{patch['path']}: tripq's patches are JSON patches"
        targets = [d for d in documents if patch_targets(patch["target"], d)]
        assert len(targets) == 1, f"{patch['path']} should select one object: {patch['target']}"
        apply_json_patch(targets[0], operations)
    set_images(documents, kustomization.get("images", []))
    return documents


def kustomization_dirs() -> list[Path]:
    return sorted(path.parent for path in K8S.rglob("kustomization.yaml"))


def patch_files() -> list[Path]:
    """The JSON patches the kustomizations apply."""
    return sorted(
        (directory / patch["path"]).resolve()
        for directory in kustomization_dirs()
        for patch in load_kustomization(directory).get("patches", [])
    )


def manifest_files() -> list[Path]:
    """Every YAML file under boot/k8s but the patches: objects and kustomizations."""
    return sorted(path for path in K8S.rglob("*.yaml") if path.resolve() not in patch_files())


def named(documents: list[Manifest], kind: str) -> dict[str, Manifest]:
    """The documents of one kind, by name."""
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


def workloads(documents: list[Manifest]) -> dict[str, Manifest]:
    """The Deployments and StatefulSets, by name."""
    return {
        d["metadata"]["name"]: d for d in documents if d["kind"] in {"Deployment", "StatefulSet"}
    }


def pod_spec(workload: Manifest) -> dict[str, Any]:
    return cast(dict[str, Any], workload["spec"]["template"]["spec"])


def pod_labels(workload: Manifest) -> dict[str, str]:
    return cast(dict[str, str], workload["spec"]["template"]["metadata"]["labels"])


def only_container(workload: Manifest) -> dict[str, Any]:
    (container,) = pod_spec(workload)["containers"]
    return cast(dict[str, Any], container)


def tripq_containers(documents: list[Manifest]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (Deployment name, container) for the containers that run tripq."""
    deployments = named(documents, "Deployment")
    for name, container_name in DEPLOYMENTS.items():
        for container in pod_spec(deployments[name])["containers"]:
            if container["name"] == container_name:
                yield name, container


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def container_port(workload: Manifest, port: int | str) -> int | None:
    """Resolve a port (number or name) against a workload's containers; None if none has it."""
    for container in pod_spec(workload)["containers"]:
        for declared in container.get("ports", []):
            if port in (declared["containerPort"], declared.get("name")):
                return int(declared["containerPort"])
    return None


def quantity(value: str | int | float) -> float:
    """Read a Kubernetes quantity such as `500m`, `2` or `1Gi`."""
    match = re.fullmatch(r"([0-9.]+)(m|k|M|G|T|Ki|Mi|Gi|Ti)?", str(value))
    assert match, f"not a quantity: {value!r}"
    scale = {
        None: 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
        "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40,
    }  # fmt: skip
    return float(match[1]) * scale[match[2]]


def probe_window_s(probe: dict[str, Any]) -> int:
    """How long a probe fails before the kubelet acts: period times failure threshold."""
    return int(probe.get("periodSeconds", 10)) * int(probe.get("failureThreshold", 3))


def exec_words(probe_or_hook: dict[str, Any]) -> list[str]:
    """The command of an exec probe or hook, a `sh -c` script split into its words."""
    command = [str(word) for word in probe_or_hook["exec"]["command"]]
    if len(command) == 3 and Path(command[0]).name in {"sh", "bash"} and command[1] == "-c":
        return shlex.split(command[2])
    return command


def schema_errors(validator: Any, document: Any) -> list[str]:
    """The schema violations of a document, each with where it is."""
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def kubernetes_errors(document: Manifest, version: str) -> list[str]:
    """Validate one core object against a Kubernetes version's schema, strictly."""
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(map(str, exc.path)) or "<root>"
        return [f"{document['kind']}/{document['metadata']['name']}: {where}: {exc.message}"]
    return []


def is_keda(document: Manifest) -> bool:
    return str(document["apiVersion"]).startswith("keda.sh/")


# --- The code and files the manifests must agree with ---


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """A Dockerfile's (keyword, arguments), as the compose checks read them."""
    return [(i.keyword, i.arguments) for i in parse_dockerfile(path)]


def dockerfile_user(image: str) -> tuple[int, int]:
    """The numeric user and group a Dockerfile's last USER runs as."""
    users = [
        args for keyword, args in dockerfile_instructions(DOCKERFILES[image]) if keyword == "USER"
    ]
    user, _, group = users[-1].partition(":")
    return int(user), int(group)


def dockerfile_cmd(image: str) -> list[str]:
    (cmd,) = [
        args for keyword, args in dockerfile_instructions(DOCKERFILES[image]) if keyword == "CMD"
    ]
    words = json.loads(cmd)
    assert isinstance(words, list)
    return [str(word) for word in words]


def dockerfile_env(image: str) -> dict[str, str]:
    """The variables a Dockerfile's ENV instructions set (`K=V ...` form)."""
    environment: dict[str, str] = {}
    for keyword, arguments in dockerfile_instructions(DOCKERFILES[image]):
        if keyword == "ENV":
            environment.update(word.partition("=")[::2] for word in shlex.split(arguments))
    return environment


def dockerfile_build_tag(image: str) -> str:
    """The image name a Dockerfile's header says to build it as (`docker build ... -t NAME`)."""
    match = re.search(r"docker build .*-t (\S+)", DOCKERFILES[image].read_text(encoding="utf-8"))
    assert match, f"{DOCKERFILES[image].name}: no `docker build -t` line"
    return match[1]


def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return str(tomllib.load(file)["project"]["version"])


def container_environment(
    container: dict[str, Any], documents: list[Manifest], secret: Manifest
) -> dict[str, str]:
    """The variables a container gets from its env and envFrom, Secrets read from the example."""
    configmaps = named(documents, "ConfigMap")
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        environment.update(configmaps[source["configMapRef"]["name"]].get("data", {}))
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = str(variable["value"])
            continue
        reference = variable["valueFrom"]
        if "secretKeyRef" in reference:
            environment[variable["name"]] = secret["stringData"][reference["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in reference:
            ref = reference["configMapKeyRef"]
            environment[variable["name"]] = configmaps[ref["name"]]["data"][ref["key"]]
        elif "fieldRef" in reference:
            environment[variable["name"]] = DOWNWARD_API[reference["fieldRef"]["fieldPath"]]
    return environment


def redis_container_start(base: list[Manifest]) -> RedisStart:
    """How the Redis container's `sh -c` script starts redis-server."""
    args = [str(word) for word in only_container(workloads(base)["tripq-redis"])["args"]]
    shell, flag, script = args
    assert (shell, flag) == ("sh", "-c"), args
    return redis_start(script)


def settings_in_pod(environment: dict[str, str]) -> Settings:
    """The Settings a pod reads: its environment over the defaults, no `.env`, nothing else."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.lower() in Settings.model_fields:
                patch.delenv(name)
        for name, value in environment.items():
            patch.setenv(name, value)
        return Settings(_env_file=None)


def tripq_cli_options() -> dict[str, set[str]]:
    """The `tripq` subcommands and the options each one takes."""
    from boot import cli

    commands = getattr(typer.main.get_command(cli.app), "commands", None)
    assert isinstance(commands, dict), "tripq should be a group of subcommands"
    return {
        name: {
            option for param in command.params for option in (*param.opts, *param.secondary_opts)
        }
        for name, command in commands.items()
    }


def health_routes() -> set[str]:
    """The GET paths of the API's health router: liveness, readiness, metrics."""
    from apps.routers.health import router

    return {
        str(getattr(route, "path", ""))
        for route in router.routes
        if "GET" in (getattr(route, "methods", None) or set())
    }


# --- Fixtures ---


@pytest.fixture(scope="module")
def base() -> list[Manifest]:
    """The objects `kubectl apply -k boot/k8s/base` creates."""
    return render(BASE)


@pytest.fixture(scope="module")
def overlays() -> dict[str, list[Manifest]]:
    """The objects of each overlay, by overlay name."""
    return {name: render(path) for name, path in OVERLAYS.items()}


@pytest.fixture(scope="module")
def secret() -> Manifest:
    """The example Secret, which names every key the manifests read."""
    (document,) = load_documents(SECRET_EXAMPLE)
    return document


@pytest.fixture(scope="module")
def pod_settings(base: list[Manifest], secret: Manifest) -> dict[str, Settings]:
    """The Settings each tripq Deployment's container reads, by Deployment name."""
    return {
        name: settings_in_pod(container_environment(container, base, secret))
        for name, container in tripq_containers(base)
    }


@pytest.fixture(scope="module")
def keda_validator() -> Any:
    return validator_of(json.loads((SCHEMAS / "keda.sh-v1alpha1.json").read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def kustomization_validator() -> Any:
    schema = json.loads((SCHEMAS / "kustomization-v1beta1.json").read_text(encoding="utf-8"))
    return validator_of(schema)


@pytest.fixture(scope="module")
def scaled_object(base: list[Manifest]) -> Manifest:
    (document,) = named(base, "ScaledObject").values()
    return document


# --- Schemas: Kubernetes', KEDA's, kustomize's ---


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_file_parses_as_yaml_mappings(path: Path) -> None:
    assert load_documents(path) != []


@pytest.mark.parametrize("path", patch_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_patch_is_a_json_patch(path: Path) -> None:
    operations = yaml.safe_load(path.read_text(encoding="utf-8"))

    assert isinstance(operations, list)
    assert operations != []
    assert all({"op", "path"} <= set(operation) for operation in operations)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_validate_against_kubernetes_schemas(
    version: str, base: list[Manifest], overlays: dict[str, list[Manifest]], secret: Manifest
) -> None:
    documents = [*base, *(d for rendered in overlays.values() for d in rendered), secret]
    errors = [e for d in documents if not is_keda(d) for e in kubernetes_errors(d, version)]

    assert errors == []


def test_keda_objects_validate_against_the_keda_schema(
    base: list[Manifest], overlays: dict[str, list[Manifest]], keda_validator: Any
) -> None:
    documents = [*base, *(d for rendered in overlays.values() for d in rendered)]
    keda = [d for d in documents if is_keda(d)]
    errors = [
        f"{d['kind']}/{d['metadata']['name']}: {error}"
        for d in keda
        for error in schema_errors(keda_validator, d)
    ]

    assert {d["kind"] for d in keda} == {"ScaledObject", "TriggerAuthentication"}
    assert errors == []


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_scaled_object_hpa_behavior_is_an_autoscaling_v2_behavior(
    version: str, scaled_object: Manifest
) -> None:
    # KEDA hands `advanced.horizontalPodAutoscalerConfig.behavior` to the HPA it creates as is.
    behavior = scaled_object["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-hpa-check"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
            "maxReplicas": 1,
            "behavior": behavior,
        },
    }

    assert kubernetes_errors(hpa, version) == []


def test_kubernetes_schema_check_rejects_a_misspelt_field(base: list[Manifest]) -> None:
    api = copy.deepcopy(named(base, "Deployment")["tripq-api"])
    container = only_container(api)
    container["livenesProbe"] = container.pop("livenessProbe")

    assert kubernetes_errors(api, KUBERNETES_VERSIONS[0]) != []


def test_keda_schema_check_rejects_numbers_and_misspelt_fields(
    scaled_object: Manifest, keda_validator: Any
) -> None:
    # KEDA reads trigger metadata as strings: the API server refuses `listLength: 10`.
    as_number = copy.deepcopy(scaled_object)
    as_number["spec"]["triggers"][0]["metadata"]["listLength"] = 10
    misspelt = copy.deepcopy(scaled_object)
    misspelt["spec"]["minReplicasCount"] = misspelt["spec"].pop("minReplicaCount")

    assert schema_errors(keda_validator, as_number) != []
    assert schema_errors(keda_validator, misspelt) != []


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=lambda p: p.name)
def test_kustomizations_validate_and_name_files_that_exist(
    directory: Path, kustomization_validator: Any
) -> None:
    kustomization = load_kustomization(directory)
    named_paths = [
        *kustomization.get("resources", []),
        *(p["path"] for p in kustomization.get("patches", [])),
    ]

    assert schema_errors(kustomization_validator, kustomization) == []
    assert [path for path in named_paths if not (directory / path).exists()] == []


def test_base_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    listed = {(BASE / path).resolve() for path in load_kustomization(BASE).get("resources", [])}
    manifests = {
        path.resolve() for path in BASE.glob("*.yaml") if path.name != "kustomization.yaml"
    }
    everywhere = {
        (directory / path).resolve()
        for directory in kustomization_dirs()
        for path in load_kustomization(directory).get("resources", [])
    }

    assert manifests - listed == set(), "a manifest that `kubectl apply -k` would leave out"
    assert SECRET_EXAMPLE.resolve() not in everywhere, "the example's password would be deployed"


def test_namespaced_objects_live_in_the_tripq_namespace(base: list[Manifest]) -> None:
    namespaces = named(base, "Namespace")
    misplaced = [
        f"{d['kind']}/{d['metadata']['name']}"
        for d in base
        if d["kind"] != "Namespace" and d["metadata"].get("namespace") != NAMESPACE
    ]

    assert list(namespaces) == [NAMESPACE]
    assert misplaced == []


# --- In step with the code: Settings, the CLI, the routes, the images ---


@pytest.mark.parametrize("directory", [BASE, *OVERLAYS.values()], ids=lambda p: p.name)
def test_tripq_container_variables_are_settings_fields(directory: Path) -> None:
    # Settings ignores unknown names, so a misspelt variable would silently do nothing.
    documents = render(directory)
    configmaps = named(documents, "ConfigMap")
    strays = []
    for deployment, container in tripq_containers(documents):
        names = {variable["name"] for variable in container.get("env", [])}
        for source in container.get("envFrom", []):
            assert set(source) == {"configMapRef"}, "envFrom of a Secret would hide its names"
            names |= set(configmaps[source["configMapRef"]["name"]].get("data", {}))
        strays += [
            f"{deployment}: {name}" for name in names if name.lower() not in Settings.model_fields
        ]
        strays += [
            f"{deployment}: {name} (Settings reads upper case)"
            for name in names
            if name != name.upper()
        ]

    assert strays == []


def test_pod_settings_validate_and_agree_between_api_and_workers(
    pod_settings: dict[str, Settings],
) -> None:
    # Building them ran Settings' validators (a Redis URL, JOB_RUN_TIMEOUT_S > max + 10, ...).
    api, worker = pod_settings["tripq-api"], pod_settings["tripq-worker"]
    differing = {
        name for name in Settings.model_fields if getattr(api, name) != getattr(worker, name)
    }

    assert api.redis_url == worker.redis_url
    assert differing <= SECRET_SETTINGS | POD_OWN_SETTINGS, (
        "the API and the workers must agree on queues and deadlines"
    )


def test_secret_settings_come_only_from_secrets(base: list[Manifest]) -> None:
    leaks = [
        f"ConfigMap/{name}: {key}"
        for name, configmap in named(base, "ConfigMap").items()
        for key in configmap.get("data", {})
        if key.lower() in SECRET_SETTINGS
    ]
    for deployment, container in tripq_containers(base):
        leaks += [
            f"{deployment}: {variable['name']}"
            for variable in container.get("env", [])
            if variable["name"].lower() in SECRET_SETTINGS
            and "secretKeyRef" not in variable.get("valueFrom", {})
        ]

    assert leaks == []


def test_referenced_secrets_and_configmaps_exist(base: list[Manifest], secret: Manifest) -> None:
    keys = set(secret["stringData"])
    references = [
        (
            variable["valueFrom"]["secretKeyRef"]["name"],
            variable["valueFrom"]["secretKeyRef"]["key"],
        )
        for workload in workloads(base).values()
        for container in pod_spec(workload)["containers"]
        for variable in container.get("env", [])
        if "secretKeyRef" in variable.get("valueFrom", {})
    ]
    references += [
        (ref["name"], ref["key"])
        for auth in named(base, "TriggerAuthentication").values()
        for ref in auth["spec"]["secretTargetRef"]
    ]
    configmap_names = [
        source["configMapRef"]["name"]
        for workload in workloads(base).values()
        for container in pod_spec(workload)["containers"]
        for source in container.get("envFrom", [])
    ]

    assert references
    assert [r for r in references if r[0] != secret["metadata"]["name"] or r[1] not in keys] == []
    assert set(configmap_names) <= set(named(base, "ConfigMap"))


def test_example_secret_url_reaches_the_redis_service_with_its_password(
    base: list[Manifest], secret: Manifest, scaled_object: Manifest
) -> None:
    url = urlsplit(secret["stringData"]["redis-url"])
    service = named(base, "Service")[str(url.hostname)]
    redis_triggers = [t for t in scaled_object["spec"]["triggers"] if t["type"] == "redis"]

    assert url.password == secret["stringData"]["redis-password"]
    assert labels_match(
        service["spec"]["selector"],
        pod_labels(workloads(base)["tripq-redis"]),
    )
    assert url.port in {port["port"] for port in service["spec"]["ports"]}
    assert {t["metadata"]["databaseIndex"] for t in redis_triggers} == {url.path.strip("/")}


def test_api_listens_on_all_interfaces_on_the_settings_port(
    base: list[Manifest], pod_settings: dict[str, Settings]
) -> None:
    settings = pod_settings["tripq-api"]
    container = dict(tripq_containers(base))["tripq-api"]
    cmd = dockerfile_cmd("api")

    assert "command" not in container, "the image's CMD runs tripq"
    assert "args" not in container
    assert settings.api_host == "0.0.0.0"
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--port") + 1] == str(settings.api_port)
    assert [p["containerPort"] for p in container["ports"]] == [settings.api_port]


def test_grpc_listens_on_all_interfaces_on_the_settings_port(
    base: list[Manifest], pod_settings: dict[str, Settings]
) -> None:
    settings = pod_settings["tripq-grpc"]
    container = dict(tripq_containers(base))["tripq-grpc"]
    (port,) = named(base, "Service")["tripq-grpc"]["spec"]["ports"]
    grpc = named(base, "Deployment")["tripq-grpc"]

    assert container["command"] == ["tripq", "grpc"], "host and port come from the settings"
    assert "grpc" in tripq_cli_options()
    assert settings.grpc_host == "0.0.0.0"
    assert [p["containerPort"] for p in container["ports"]] == [settings.grpc_port]
    assert container_port(grpc, port["targetPort"]) == settings.grpc_port
    assert port["port"] == settings.grpc_port, "clients use :50051, as elsewhere"


def test_grpc_probes_ask_grpc_health_for_the_overall_status_on_its_port(
    base: list[Manifest], pod_settings: dict[str, Settings]
) -> None:
    # The overall status never waits on Redis, as the API's /health does not.
    container = dict(tripq_containers(base))["tripq-grpc"]
    probes = [container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")]

    assert [probe["grpc"] for probe in probes] == [
        {"port": pod_settings["tripq-grpc"].grpc_port}
    ] * 3


def test_grpc_pods_agree_with_the_api_on_every_setting_but_job_secrets(
    pod_settings: dict[str, Settings],
) -> None:
    # gRPC makes no async jobs, so it needs no WEBHOOK_SECRET.
    api, grpc = pod_settings["tripq-api"], pod_settings["tripq-grpc"]

    assert [n for n in Settings.model_fields if getattr(api, n) != getattr(grpc, n)] == [
        "webhook_secret"
    ]


def test_worker_runs_one_process_per_pod_serving_metrics_on_the_settings_port(
    base: list[Manifest], pod_settings: dict[str, Settings]
) -> None:
    settings = pod_settings["tripq-worker"]
    container = dict(tripq_containers(base))["tripq-worker"]
    cmd = dockerfile_cmd("worker")

    assert "command" not in container, "the image's CMD runs tripq"
    assert "args" not in container
    assert cmd[cmd.index("--processes") + 1] == "1"
    assert settings.worker_processes == 1
    assert settings.worker_metrics_port > 0, "the worker's probes read its metrics port"
    assert [p["containerPort"] for p in container["ports"]] == [settings.worker_metrics_port]


def test_tripq_images_are_the_ones_the_dockerfiles_build(base: list[Manifest]) -> None:
    version = project_version()
    images = {name: container["image"] for name, container in tripq_containers(base)}

    assert images == {
        name: f"{dockerfile_build_tag(image)}:{version}" for name, image in IMAGES.items()
    }


def test_redis_image_is_the_one_compose_runs(base: list[Manifest]) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    redis = only_container(workloads(base)["tripq-redis"])

    assert redis["image"] == compose["services"]["redis"]["image"]


# --- Labels, selectors, Services, disruption budgets ---


def test_workload_selectors_match_their_own_pods_only(base: list[Manifest]) -> None:
    found = workloads(base)
    mismatched = [
        name
        for name, w in found.items()
        if not labels_match(w["spec"]["selector"]["matchLabels"], pod_labels(w))
    ]
    overlapping = [
        (a, b)
        for a, wa in found.items()
        for b, wb in found.items()
        if a != b and labels_match(wa["spec"]["selector"]["matchLabels"], pod_labels(wb))
    ]

    assert set(found) == {*DEPLOYMENTS, "tripq-redis"}
    assert mismatched == []
    assert overlapping == []


def test_every_service_selects_one_workload_and_reaches_its_ports(base: list[Manifest]) -> None:
    found = workloads(base)
    problems = []
    for name, service in named(base, "Service").items():
        selected = [
            w for w in found.values() if labels_match(service["spec"]["selector"], pod_labels(w))
        ]
        if len(selected) != 1:
            problems.append(f"Service/{name} selects {len(selected)} workloads")
            continue
        problems += [
            f"Service/{name}: no container port {port.get('targetPort', port['port'])}"
            for port in service["spec"]["ports"]
            if container_port(selected[0], port.get("targetPort", port["port"])) is None
        ]

    assert problems == []


def test_api_service_targets_the_api_container_port(
    base: list[Manifest], pod_settings: dict[str, Settings]
) -> None:
    service = named(base, "Service")["tripq-api"]
    api = named(base, "Deployment")["tripq-api"]
    (port,) = service["spec"]["ports"]

    assert labels_match(service["spec"]["selector"], pod_labels(api))
    assert container_port(api, port["targetPort"]) == pod_settings["tripq-api"].api_port
    assert port["port"] == pod_settings["tripq-api"].api_port, "clients use :8182, as elsewhere"


def test_redis_statefulset_is_governed_by_a_headless_service(base: list[Manifest]) -> None:
    redis = workloads(base)["tripq-redis"]
    governing = named(base, "Service")[redis["spec"]["serviceName"]]

    assert governing["spec"].get("clusterIP") == "None"
    assert labels_match(governing["spec"]["selector"], pod_labels(redis))


def test_disruption_budgets_cover_each_tripq_deployment_and_allow_drains(
    base: list[Manifest],
) -> None:
    found = workloads(base)
    covered = {}
    for name, budget in named(base, "PodDisruptionBudget").items():
        selected = [
            w
            for w, workload in found.items()
            if labels_match(
                budget["spec"]["selector"]["matchLabels"],
                pod_labels(workload),
            )
        ]
        assert len(selected) == 1, f"PodDisruptionBudget/{name} selects {selected}"
        covered[selected[0]] = budget["spec"]

    assert set(covered) == set(DEPLOYMENTS)
    # minAvailable would block every drain of a fleet scaled down to that many pods.
    assert all(
        "minAvailable" not in spec and spec["maxUnavailable"] >= 1 for spec in covered.values()
    )


# --- Probes and graceful shutdown ---


@pytest.mark.parametrize("deployment", list(DEPLOYMENTS))
def test_tripq_deployments_have_startup_readiness_and_liveness_probes(
    deployment: str, base: list[Manifest]
) -> None:
    container = dict(tripq_containers(base))[deployment]

    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(container)


def test_probe_timing_is_sane(base: list[Manifest]) -> None:
    problems = []
    for name, workload in workloads(base).items():
        grace = pod_spec(workload).get("terminationGracePeriodSeconds", 30)
        for container in pod_spec(workload)["containers"]:
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(kind)
                if probe is None:
                    continue
                where = f"{name}/{container['name']} {kind}"
                period, timeout = probe.get("periodSeconds", 10), probe.get("timeoutSeconds", 1)
                if timeout >= period:
                    problems.append(f"{where}: timeout {timeout} s >= period {period} s")
                if (
                    "exec" in probe
                    and "tripq" in exec_words(probe)
                    and timeout < TRIPQ_PROBE_MIN_TIMEOUT_S
                ):
                    problems.append(f"{where}: {timeout} s is too short to start the tripq CLI")
            if name in DEPLOYMENTS:
                # A draining process stops answering; its liveness probe must not kill it first.
                liveness = probe_window_s(container["livenessProbe"])
                if liveness < grace:
                    problems.append(f"{name}: liveness fails in {liveness} s < grace {grace} s")
                if probe_window_s(container["startupProbe"]) < 60:
                    problems.append(f"{name}: under a minute to start")

    assert problems == []


def test_api_probes_call_health_never_ready(base: list[Manifest]) -> None:
    # /ready is 503 while no worker is alive: as the readiness probe it would take every API pod
    # out of its Service when KEDA scales the workers to zero, and no job could start them again.
    container = dict(tripq_containers(base))["tripq-api"]
    probes = {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    routes = health_routes()

    assert {"/health", "/ready"} <= routes
    assert {kind: probe["httpGet"]["path"] for kind, probe in probes.items()} == dict.fromkeys(
        probes, "/health"
    )
    assert all(
        container_port(named(base, "Deployment")["tripq-api"], p["httpGet"]["port"])
        for p in probes.values()
    )


def test_worker_readiness_is_its_own_heartbeat_through_the_cli(base: list[Manifest]) -> None:
    container = dict(tripq_containers(base))["tripq-worker"]
    words = exec_words(container["readinessProbe"])
    options = tripq_cli_options()

    assert words[:3] == ["exec", "tripq", "workers"] or words[:2] == ["tripq", "workers"]
    assert "--require-host" in options["workers"]
    assert words[words.index("--require-host") + 1] == "$HOSTNAME", "each pod checks its own worker"
    assert all(w in options["workers"] for w in words if w.startswith("-"))


def test_worker_startup_and_liveness_read_the_metrics_port_not_redis(
    base: list[Manifest], pod_settings: dict[str, Settings]
) -> None:
    # A liveness probe that needs Redis would restart every worker while Redis is down.
    worker = named(base, "Deployment")["tripq-worker"]
    container = dict(tripq_containers(base))["tripq-worker"]
    ports = [
        container_port(worker, container[kind]["httpGet"]["port"])
        for kind in ("startupProbe", "livenessProbe")
    ]

    assert ports == [pod_settings["tripq-worker"].worker_metrics_port] * 2


def test_api_grace_outlasts_the_prestop_pause_and_gunicorn_drain(
    base: list[Manifest], pod_settings: dict[str, Settings]
) -> None:
    api = named(base, "Deployment")["tripq-api"]
    container = dict(tripq_containers(base))["tripq-api"]
    pre_stop = container["lifecycle"]["preStop"]
    pause = pre_stop["sleep"]["seconds"] if "sleep" in pre_stop else float(exec_words(pre_stop)[-1])
    drain = pod_settings["tripq-api"].request_timeout_max_s + DRAIN_MARGIN_S

    assert "sleep" in pre_stop or exec_words(pre_stop)[0] == "sleep"
    assert pause > 0
    assert pod_spec(api)["terminationGracePeriodSeconds"] > pause + drain, (
        "SIGKILL would cut the drain"
    )


def test_grpc_grace_outlasts_the_prestop_pause_and_its_drain(
    base: list[Manifest], pod_settings: dict[str, Settings]
) -> None:
    from apps.grpc.server import DRAIN_EXTRA_S

    grpc = named(base, "Deployment")["tripq-grpc"]
    pre_stop = dict(tripq_containers(base))["tripq-grpc"]["lifecycle"]["preStop"]
    pause = float(exec_words(pre_stop)[-1])
    drain = pod_settings["tripq-grpc"].request_timeout_max_s + DRAIN_EXTRA_S

    assert exec_words(pre_stop)[0] == "sleep"
    assert pod_spec(grpc)["terminationGracePeriodSeconds"] > pause + drain


def test_worker_grace_outlasts_the_longest_task(
    base: list[Manifest], pod_settings: dict[str, Settings]
) -> None:
    worker = named(base, "Deployment")["tripq-worker"]
    longest = pod_settings["tripq-worker"].request_timeout_max_s + DRAIN_MARGIN_S

    assert pod_spec(worker)["terminationGracePeriodSeconds"] > longest, "warm shutdown cut short"


# --- Security and resources ---


def test_every_pod_meets_the_restricted_pod_security_standard(base: list[Manifest]) -> None:
    problems = []
    for name, workload in workloads(base).items():
        spec = pod_spec(workload)
        pod = spec.get("securityContext", {})
        if pod.get("runAsNonRoot") is not True or not pod.get("runAsUser"):
            problems.append(f"{name}: not a non-root user")
        if pod.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: no RuntimeDefault seccomp profile")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: mounts a service account token it never uses")
        for container in spec["containers"]:
            context = container.get("securityContext", {})
            if context.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}/{container['name']}: privilege escalation allowed")
            if context.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{name}/{container['name']}: capabilities kept")
            if context.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{name}/{container['name']}: writable root filesystem")

    assert problems == []
    assert (
        named(base, "Namespace")[NAMESPACE]["metadata"]["labels"][
            "pod-security.kubernetes.io/enforce"
        ]
        == "restricted"
    )


@pytest.mark.parametrize(("deployment", "image"), list(IMAGES.items()))
def test_tripq_pods_run_as_the_image_user_with_writable_tmp_and_logs(
    deployment: str, image: str, base: list[Manifest]
) -> None:
    spec = pod_spec(named(base, "Deployment")[deployment])
    container = dict(tripq_containers(base))[deployment]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    writable = {
        m["mountPath"]
        for m in container.get("volumeMounts", [])
        if not m.get("readOnly") and "emptyDir" in volumes[m["name"]]
    }
    user, group = dockerfile_user(image)

    assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]) == (
        user,
        group,
    )
    # gunicorn's metrics folder and Python's temp files, and the image's LOG_DIR.
    assert {"/tmp", dockerfile_env(image)["LOG_DIR"]} <= writable
    assert all(v["emptyDir"].get("sizeLimit") for v in volumes.values() if "emptyDir" in v)


def test_tripq_pods_get_no_service_link_variables(base: list[Manifest]) -> None:
    # Service links add <SERVICE>_PORT=tcp://... variables; Settings would read one named like a
    # field (a Service named `api` would set API_PORT) and fail or misbehave.
    linked = [
        name
        for name in DEPLOYMENTS
        if pod_spec(named(base, "Deployment")[name]).get("enableServiceLinks") is not False
    ]

    assert linked == []


def test_every_container_requests_resources_within_its_limits(base: list[Manifest]) -> None:
    problems = []
    for name, workload in workloads(base).items():
        for container in pod_spec(workload)["containers"]:
            resources = container.get("resources", {})
            requests, limits = resources.get("requests", {}), resources.get("limits", {})
            where = f"{name}/{container['name']}"
            problems += [f"{where}: no {r} request" for r in ("cpu", "memory") if r not in requests]
            if "memory" not in limits:
                problems.append(f"{where}: no memory limit")
            problems += [
                f"{where}: {r} request above its limit"
                for r in requests
                if r in limits and quantity(requests[r]) > quantity(limits[r])
            ]

    assert problems == []


# --- Autoscaling: the API's HPA, the workers' KEDA ScaledObject ---


def test_autoscalers_target_existing_deployments_one_each(
    base: list[Manifest], scaled_object: Manifest
) -> None:
    deployments = named(base, "Deployment")
    targets = [
        hpa["spec"]["scaleTargetRef"] for hpa in named(base, "HorizontalPodAutoscaler").values()
    ]
    targets.append({"kind": "Deployment", **scaled_object["spec"]["scaleTargetRef"]})
    names = [t["name"] for t in targets]

    assert all(t["kind"] == "Deployment" and t["name"] in deployments for t in targets), targets
    assert sorted(names) == sorted(DEPLOYMENTS), "each tripq Deployment has exactly one autoscaler"
    # A replica count in the manifest would reset the autoscaler's on every apply.
    assert [name for name in names if "replicas" in deployments[name]["spec"]] == []


@pytest.mark.parametrize("deployment", ["tripq-api", "tripq-grpc"])
def test_hpa_scales_the_api_and_grpc_on_cpu_which_they_request(
    deployment: str, base: list[Manifest]
) -> None:
    (hpa,) = [
        hpa
        for hpa in named(base, "HorizontalPodAutoscaler").values()
        if hpa["spec"]["scaleTargetRef"]["name"] == deployment
    ]
    api = named(base, "Deployment")[deployment]
    resources = [m["resource"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]

    assert [r["name"] for r in resources] == ["cpu"]
    assert 0 < resources[0]["target"]["averageUtilization"] <= 100
    assert all(
        "cpu" in c.get("resources", {}).get("requests", {}) for c in pod_spec(api)["containers"]
    )
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_keda_scales_the_workers_on_the_settings_queues(
    base: list[Manifest], scaled_object: Manifest, pod_settings: dict[str, Settings]
) -> None:
    settings = pod_settings["tripq-worker"]
    redis = [t for t in scaled_object["spec"]["triggers"] if t["type"] == "redis"]

    assert scaled_object["spec"]["scaleTargetRef"]["name"] == "tripq-worker"
    assert sorted(t["metadata"]["listName"] for t in redis) == sorted(
        [settings.queue, settings.job_queue]
    )
    assert all(int(t["metadata"]["activationListLength"]) == 0 for t in redis), (
        "one task starts a worker"
    )


def test_keda_reads_redis_through_its_service_with_the_secret_password(
    base: list[Manifest], scaled_object: Manifest, secret: Manifest
) -> None:
    services = named(base, "Service")
    authentications = named(base, "TriggerAuthentication")
    secret_name = secret["metadata"]["name"]
    problems = []
    for trigger in (t for t in scaled_object["spec"]["triggers"] if t["type"] == "redis"):
        host, _, port = trigger["metadata"]["address"].rpartition(":")
        # KEDA's operator runs in its own namespace: a short name would not resolve there.
        service, namespace, rest = [*host.split(".", 2), "", ""][:3]
        if namespace != NAMESPACE or not rest.startswith("svc"):
            problems.append(f"{trigger['name']}: {host} is not a Service's full name")
        if int(port) not in {
            p["port"] for p in services.get(service, {}).get("spec", {}).get("ports", [])
        }:
            problems.append(f"{trigger['name']}: no Service {service} on port {port}")
        auth = authentications.get(trigger.get("authenticationRef", {}).get("name", ""))
        passwords = [
            r
            for r in (auth or {}).get("spec", {}).get("secretTargetRef", [])
            if r["parameter"] == "password"
        ]
        if [(r["name"], r["key"]) for r in passwords] != [(secret_name, "redis-password")]:
            problems.append(f"{trigger['name']}: not authenticated with the Redis password")

    assert problems == []


def test_keda_covers_in_flight_work_with_the_workers_cpu(
    base: list[Manifest], scaled_object: Manifest
) -> None:
    # Taken tasks sit in kombu's `unacked` hash, which LLEN cannot see: the CPU of busy workers
    # keeps them when the lists are empty.
    (cpu,) = [t for t in scaled_object["spec"]["triggers"] if t["type"] == "cpu"]
    worker = named(base, "Deployment")[scaled_object["spec"]["scaleTargetRef"]["name"]]
    containers = {c["name"]: c for c in pod_spec(worker)["containers"]}

    assert cpu["metricType"] == "Utilization"
    assert 0 < int(cpu["metadata"]["value"]) <= 100
    assert cpu["metadata"]["containerName"] in containers
    assert "cpu" in containers[cpu["metadata"]["containerName"]]["resources"]["requests"]


def test_keda_keeps_a_worker_by_default_and_scales_down_gently(scaled_object: Manifest) -> None:
    spec = scaled_object["spec"]
    scale_down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]

    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], "synchronous requests need one"
    assert scale_down["stabilizationWindowSeconds"] >= 60


# --- Overlays: GPU workers, scale to zero ---


def test_scale_to_zero_overlay_only_lowers_the_minimum_to_zero(
    base: list[Manifest], overlays: dict[str, list[Manifest]], scaled_object: Manifest
) -> None:
    rendered = overlays["scale-to-zero"]
    (zero,) = named(rendered, "ScaledObject").values()
    expected = copy.deepcopy(scaled_object)
    expected["spec"]["minReplicaCount"] = 0

    assert zero == expected
    assert [d for d in rendered if d["kind"] != "ScaledObject"] == [
        d for d in base if d["kind"] != "ScaledObject"
    ]


def gpu_limits(documents: list[Manifest]) -> dict[str, Any]:
    """The `nvidia.com/gpu` limit of each container that sets one, by workload/container."""
    return {
        f"{name}/{c['name']}": c["resources"]["limits"]["nvidia.com/gpu"]
        for name, w in workloads(documents).items()
        for c in pod_spec(w)["containers"]
        if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
    }


def test_gpu_overlay_gives_each_worker_one_nvidia_gpu_and_nothing_else(
    base: list[Manifest], overlays: dict[str, list[Manifest]]
) -> None:
    rendered = overlays["gpu"]
    worker = named(rendered, "Deployment")["tripq-worker"]
    tolerations = pod_spec(worker).get("tolerations", [])

    assert gpu_limits(base) == {}, "CPU is the default: nothing in tripq requires a GPU"
    assert {k: quantity(v) for k, v in gpu_limits(rendered).items()} == {"tripq-worker/worker": 1}
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in tolerations)
    assert [
        d for d in rendered if d["metadata"]["name"] != "tripq-worker" or d["kind"] != "Deployment"
    ] == [d for d in base if d["metadata"]["name"] != "tripq-worker" or d["kind"] != "Deployment"]


def test_gpu_overlay_runs_the_gpu_image_and_requires_a_gpu(
    base: list[Manifest], overlays: dict[str, list[Manifest]], secret: Manifest
) -> None:
    # The GPU variant of the worker image (EXTRAS=gpu: PyTorch), tagged as the base's with
    # `-gpu`; and `cuda`, so that a worker without a GPU stays unready rather than serve on CPU.
    rendered = overlays["gpu"]
    worker = dict(tripq_containers(rendered))["tripq-worker"]
    cpu_worker = dict(tripq_containers(base))["tripq-worker"]
    settings = settings_in_pod(container_environment(worker, rendered, secret))
    cpu_settings = settings_in_pod(container_environment(cpu_worker, base, secret))

    assert worker["image"] == f"{dockerfile_build_tag('worker')}:{project_version()}-gpu"
    assert {v["name"]: v.get("value") for v in worker["env"]}["INFERENCE_DEVICE"] == "cuda"
    assert settings.inference_device == "cuda"
    assert cpu_worker["image"] == f"{dockerfile_build_tag('worker')}:{project_version()}"
    assert cpu_settings.inference_device == "auto", "the CPU image on a CPU node: auto is the CPU"


def test_gpu_overlay_says_how_to_build_the_image_it_runs(
    overlays: dict[str, list[Manifest]],
) -> None:
    worker = dict(tripq_containers(overlays["gpu"]))["tripq-worker"]
    text = (OVERLAYS["gpu"] / "kustomization.yaml").read_text(encoding="utf-8")
    (build,) = [line.lstrip("# ") for line in text.splitlines() if "docker build" in line]
    words = shlex.split(build)

    assert words[words.index("--build-arg") + 1] == "EXTRAS=gpu"
    assert ROOT / words[words.index("-f") + 1] == DOCKERFILES["worker"]
    assert words[words.index("-t") + 1] == worker["image"]


@pytest.mark.parametrize(
    ("image", "entry", "expected"),
    [
        (
            "tripq-worker:0.1.0",
            {"name": "tripq-worker", "newTag": "0.1.0-gpu"},
            "tripq-worker:0.1.0-gpu",
        ),
        (
            "tripq-worker:0.1.0",
            {"name": "tripq-worker", "newName": "r.io:5000/w"},
            "r.io:5000/w:0.1.0",
        ),
        (
            "r.io:5000/tripq-worker",
            {"name": "r.io:5000/tripq-worker", "newTag": "2"},
            "r.io:5000/tripq-worker:2",
        ),
        (
            "tripq-worker:0.1.0",
            {"name": "tripq-worker", "digest": "sha256:ab"},
            "tripq-worker@sha256:ab",
        ),
        ("tripq-api:0.1.0", {"name": "tripq-worker", "newTag": "0.1.0-gpu"}, "tripq-api:0.1.0"),
    ],
    ids=["new-tag", "new-name", "registry-port", "digest", "other-image"],
)
def test_images_entries_rewrite_the_images_they_name(
    image: str, entry: dict[str, str], expected: str
) -> None:
    pod = {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}}

    set_images([pod], [entry])

    assert pod["spec"]["template"]["spec"]["containers"][0]["image"] == expected


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=lambda p: p.name)
def test_render_builds_what_kubectls_kustomize_builds(directory: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl: the rendering is checked against kustomize where it is installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    def identity(document: Manifest) -> tuple[str, str, str]:
        metadata = document["metadata"]
        return document["kind"], metadata.get("namespace", ""), metadata["name"]

    built = [d for d in yaml.safe_load_all(result.stdout) if d is not None]

    assert sorted(render(directory), key=identity) == sorted(built, key=identity)


# --- Redis ---


def test_redis_keeps_an_append_only_file_on_a_persistent_volume(base: list[Manifest]) -> None:
    redis = workloads(base)["tripq-redis"]
    container = only_container(redis)
    options = redis_options(redis_container_start(base))
    claims = {t["metadata"]["name"] for t in redis["spec"].get("volumeClaimTemplates", [])}
    data = [m for m in container["volumeMounts"] if m["mountPath"] == "/data"]

    assert redis["spec"]["replicas"] == 1
    assert options["--appendonly"] == "yes"
    assert len(data) == 1
    assert data[0]["name"] in claims


def test_redis_refuses_writes_when_full_and_leaves_room_for_a_rewrite(
    base: list[Manifest],
) -> None:
    container = only_container(workloads(base)["tripq-redis"])
    options = redis_options(redis_container_start(base))
    megabytes = re.fullmatch(r"(\d+)mb", options["--maxmemory"])

    # noeviction: evicting would drop queued tasks, results and jobs without a word.
    assert options["--maxmemory-policy"] == "noeviction"
    assert megabytes, "maxmemory in mb (Redis's 1mb is 2**20 bytes)"
    # Half the limit at most: the fork of an AOF rewrite may copy much of the dataset.
    assert int(megabytes[1]) * 2**20 * 2 <= quantity(container["resources"]["limits"]["memory"])


def test_redis_reads_the_secrets_password_from_its_stdin_never_its_arguments(
    base: list[Manifest], secret: Manifest
) -> None:
    # Arguments are in the container's spec that the runtime keeps, and in `ps` on the node; a
    # `$(VAR)` reference in them is expanded by the kubelet into the password itself.
    container = only_container(workloads(base)["tripq-redis"])
    start = redis_container_start(base)
    env = {v["name"]: v for v in container["env"]}

    assert start.arguments[0] == "-", "redis-server reads its configuration from stdin"
    assert start.stdin == ["requirepass $REDISCLI_AUTH"]
    assert env["REDISCLI_AUTH"]["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"],
        "key": "redis-password",
    }
    assert not any("$(" in str(word) for word in container.get("args", [])), "kubelet expands it"
    assert "command" not in container, "the image's entrypoint drops root, as in compose"


def test_redis_runs_the_script_that_compose_runs_and_its_tests_start(base: list[Manifest]) -> None:
    # tests/deploy/test_containers.py starts a real redis-server with compose's script.
    compose_script = compose_command_words(load_compose(COMPOSE)["services"]["redis"]["command"])
    args = [str(word) for word in only_container(workloads(base)["tripq-redis"])["args"]]

    assert args == compose_script


def test_api_does_not_start_without_api_keys(base: list[Manifest]) -> None:
    container = dict(tripq_containers(base))["tripq-api"]
    (keys,) = [v for v in container["env"] if v["name"] == "API_KEYS"]

    # Not optional: a missing key leaves the pod in CreateContainerConfigError, not open.
    assert keys["valueFrom"]["secretKeyRef"].get("optional", False) is False


def test_workers_serve_metrics_on_the_pods_own_address(
    base: list[Manifest], pod_settings: dict[str, Settings]
) -> None:
    # The probes and Prometheus reach the pod's IP; loopback is out of their reach, and every
    # interface more than they need.
    container = dict(tripq_containers(base))["tripq-worker"]
    (host,) = [v for v in container["env"] if v["name"] == "WORKER_METRICS_HOST"]

    assert host["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert pod_settings["tripq-worker"].worker_metrics_host == DOWNWARD_API["status.podIP"]
    assert pod_settings["tripq-api"].worker_metrics_host == "127.0.0.1"
