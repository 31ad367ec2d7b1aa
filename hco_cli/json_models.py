"""Reading pydantic models from JSON files, with one-line errors (kept apart from
:mod:`hco_cli.io_utils`, which must not import pydantic: ``hco sweep --status`` stays light)."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from hco_cli.errors import DataError

M = TypeVar("M", bound=BaseModel)


def read_json_model(model: type[M], path: Path, *, missing: str = "") -> M:
    """Validate the JSON file ``path`` into ``model``; one-line DataErrors for a missing file
    (``missing`` adds what to do about it), an unreadable one and the first invalid field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing {path}" if not missing else f"{path} not found: {missing}")
    try:
        return model.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DataError(f"{path}: invalid field {where!r}: {first['msg']}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
