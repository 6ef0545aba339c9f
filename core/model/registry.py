"""Model cards and model directories, readable without scikit-learn.

A model is a directory whose name is its version; `CURRENT` names the version served by default:

    repo/models/
        CURRENT                  one line: the default version, e.g. `baseline-2021-01`
        baseline-2021-01/
            model.skops          the fitted pipeline, in skops' format (never pickle)
            card.json            a `ModelCard`: data, metrics, features, libraries, artifact sha256

The API process imports this module to learn the serving version; only workers and the CLI load the
artifact itself (core.model.artifact), so scikit-learn stays out of the API.
"""

from pathlib import Path

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import InvalidArtifact, ModelError
from core.infra.files import sha256_file as sha256_file  # its home before core.infra.files
from core.infra.files import write_atomically

# The model recipes (core.model.artifact builds each); named here, where nothing imports
# scikit-learn, so that the CLI can offer them without loading it. The default is the most accurate.
MODEL_KINDS = ("gbm", "baseline")
DEFAULT_KIND = "gbm"

CARD_FILE = "card.json"
ARTIFACT_FILE = "model.skops"
CURRENT_FILE = "CURRENT"


class DataFile(BaseModel):
    """One trip file a model was trained or validated on."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="File name only, so cards do not leak or depend on local paths.")
    sha256: str
    rows_read: int = Field(description="Rows in the file.")
    rows: int = Field(description="Rows kept after cleaning (1 <= duration <= 60 minutes).")


class ModelCard(BaseModel):
    """What a model is, what it was made from, and how well it did; stored as card.json."""

    model_config = ConfigDict(frozen=True)

    version: str = Field(description="The model's version: the name of its directory.")
    kind: str = Field(
        description="The recipe, e.g. `baseline` (DictVectorizer + LinearRegression)."
    )
    created: str = Field(description="When it was trained, ISO 8601 UTC.")
    target: str = Field(default="duration", description="What it predicts: trip minutes.")
    train_files: list[DataFile]
    valid_files: list[DataFile]
    train_rows: int = Field(description="Training rows after cleaning.")
    valid_rows: int = Field(description="Validation rows after cleaning.")
    metrics: dict[str, float] = Field(
        description="rmse, mae and r2 on the validation rows; train_rmse on the training rows."
    )
    features: list[str] = Field(description="Input fields the model expects for each trip.")
    libraries: dict[str, str] = Field(description="Versions of python and the ML libraries used.")
    artifact: str = Field(default=ARTIFACT_FILE, description="Artifact file name in the directory.")
    artifact_sha256: str


def read_model_file(path: Path, what: str) -> bytes:
    """Read one file of a model directory, or say clearly why it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelError(f"no {what}: {path} does not exist") from exc
    except OSError as exc:
        raise ModelError(f"cannot read {what} {path}: {exc.strerror}") from exc


def read_card(model_dir: Path) -> ModelCard:
    """Read and validate the card of the model in `model_dir`."""
    path = model_dir / CARD_FILE
    raw = read_model_file(path, "model card")
    try:
        return ModelCard.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        raise InvalidArtifact(f"{path} is not a valid model card: {where}: {first['msg']}") from exc


def check_version_name(version: str) -> str:
    """Return `version` if it can name a model directory, else raise ModelError."""
    # A version becomes a path under the artifact dir, so refuse anything that could leave it.
    if not version or version in {".", ".."} or Path(version).name != version or "\\" in version:
        raise ModelError(f"{version!r} is not a model version (a directory name is expected)")
    return version


def read_current(artifact_dir: Path) -> str:
    """Return the version named in `artifact_dir/CURRENT`."""
    path = artifact_dir / CURRENT_FILE
    try:
        version = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError as exc:
        raise ModelError(f"no default model: {path} does not exist; name a version") from exc
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror}") from exc
    if not version:
        raise ModelError(f"no default model: {path} is empty")
    return check_version_name(version)


def write_current(artifact_dir: Path, version: str) -> Path:
    """Make `version` the default model of `artifact_dir`, atomically."""
    check_version_name(version)
    path = artifact_dir / CURRENT_FILE
    # Readers may look at CURRENT at any moment: write a sibling and rename it over the old one.
    try:
        write_atomically(path, version + "\n")
    except OSError as exc:
        raise ModelError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def resolve_model_dir(artifact_dir: Path, version: str | None) -> Path:
    """Return the directory of model `version`, or of the one named in CURRENT when None."""
    name = read_current(artifact_dir) if version is None else check_version_name(version)
    model_dir = artifact_dir / name
    if not model_dir.is_dir():
        raise ModelError(f"model {name!r} not found: {model_dir} is not a directory")
    return model_dir


def serving_version(artifact_dir: Path, version: str | None) -> str:
    """Name the model version the fleet is configured to serve (`version`, else CURRENT's),
    without loading the model; "unknown" when it has no readable card."""
    try:
        return read_card(resolve_model_dir(artifact_dir, version)).version
    except ModelError as exc:
        logger.warning("no model card", error=exc.message)
        return "unknown"
