"""Generate the Python stubs of tripq's protos, beside them: `tripq grpc-stubs`.

    apps/grpc/protos/tripq/v1/trip.proto ── grpc_tools.protoc ──> trip_pb2.py      messages
                                                                  trip_pb2_grpc.py client, servicer
                                                                  *.pyi            their types

grpcio-tools and mypy-protobuf are dev extras: the stubs are committed, so the images never run
protoc. protoc writes the import of a sibling stub as `from tripq.v1 import ...` (the proto's own
package); the stubs live in the package apps.grpc.protos, so that import is rewritten to it.
A test regenerates them into a temporary folder and fails when the committed ones differ.
"""

import shutil
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent / "protos"
PROTOS = ("tripq/v1/trip.proto",)
STUB_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
# The package of the stubs, as Python imports it.
STUB_PACKAGE = "apps.grpc.protos"


class StubsError(Exception):
    """protoc, or one of its plugins, failed or is missing."""


def stub_paths(root: Path) -> list[Path]:
    """List the stub files that the protos under `root` have (or would have)."""
    return [
        root / (proto.removesuffix(".proto") + suffix)
        for proto in PROTOS
        for suffix in STUB_SUFFIXES
    ]


def generate_stubs(out_dir: Path) -> list[Path]:
    """Write the stubs of PROTOS under `out_dir` (as under PROTO_ROOT); return their paths."""
    try:
        # A dev extra: imported only by whoever regenerates the stubs.
        from grpc_tools import protoc  # type: ignore[import-untyped]
    except ModuleNotFoundError as exc:
        raise StubsError(f"grpcio-tools is needed to generate the stubs: {exc}") from None
    plugins = {name: shutil.which(name, path=_scripts_dir()) for name in _MYPY_PLUGINS}
    missing = [name for name, path in plugins.items() if path is None]
    if missing:
        raise StubsError(f"mypy-protobuf is needed to generate the stubs' types: no {missing}")
    out_dir.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")  # google/protobuf/*.proto
    argv = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(f"--plugin={name}={path}" for name, path in plugins.items()),
        *PROTOS,
    ]
    if protoc.main(argv) != 0:
        raise StubsError(f"protoc failed: {' '.join(argv)}")
    written = stub_paths(out_dir)
    for path in written:
        path.write_text(_package_imports(path.read_text()))
    return written


# The plugins mypy-protobuf installs beside the interpreter: the types of messages and services.
_MYPY_PLUGINS = ("protoc-gen-mypy", "protoc-gen-mypy_grpc")


def _scripts_dir() -> str:
    return str(Path(sys.executable).parent)


def _package_imports(text: str) -> str:
    """Import sibling stubs from the package they live in, not from the proto's package."""
    for proto in PROTOS:
        package = proto.rsplit("/", 1)[0].replace("/", ".")
        text = text.replace(f"from {package} import", f"from {STUB_PACKAGE}.{package} import")
    return text
