"""Label maps: the label values of a source and the contiguous training indices 0..K-1.

Networks predict K channels, so a source whose values are, say, {0, 200, 500, 600} is trained
on indices {0, 1, 2, 3}; ``hco prepare`` stores the indices and this map, and ``hco predict``
writes the original values back. Value 0 is always background (index 0); the other values take
indices 1..K-1 in increasing order.

An *ignore* value (nnU-Net's "ignore" label, e.g. the unannotated voxels of scribbles) is not a
class: it is stored as index K, which every loss and metric skips.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hco_cli.errors import ConfigError, DataError

MAX_LABEL_VALUE = int(np.iinfo(np.uint16).max)


class LabelMap(BaseModel):
    """Original value and name of every training index, plus an optional ignore value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    values: tuple[int, ...] = Field(description="original label value of index 0, 1, ..., K-1")
    names: tuple[str, ...]
    ignore_value: int | None = Field(default=None, description="original value that is no class")

    @model_validator(mode="after")
    def _consistent(self) -> LabelMap:
        if len(self.values) != len(self.names):
            raise ValueError(f"{len(self.values)} label values but {len(self.names)} names")
        if not self.values or self.values[0] != 0:
            raise ValueError("index 0 must be the background value 0")
        if list(self.values) != sorted(set(self.values)):
            raise ValueError(f"label values {list(self.values)} must be distinct and increasing")
        if self.values[-1] > MAX_LABEL_VALUE or min(self.values) < 0:
            raise ValueError(f"label values must lie in 0..{MAX_LABEL_VALUE}")
        if self.ignore_value is not None and (
                self.ignore_value in self.values or not 0 <= self.ignore_value <= MAX_LABEL_VALUE):
            raise ValueError(f"ignore value {self.ignore_value} must be a value in "
                             f"1..{MAX_LABEL_VALUE} that is no class")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.values)

    @property
    def ignore_index(self) -> int | None:
        """Training index of ignored voxels: K, one past the last class."""
        return None if self.ignore_value is None else self.num_classes

    @property
    def is_identity(self) -> bool:
        return self.ignore_value is None and self.values == tuple(range(self.num_classes))

    def allowed(self) -> frozenset[int]:
        """Every value a label file may hold."""
        extra = () if self.ignore_value is None else (self.ignore_value,)
        return frozenset((*self.values, *extra))

    def to_indices(self, label: np.ndarray) -> np.ndarray:
        """Training indices of a label map of original values (all of them allowed)."""
        top = max(self.allowed())
        table = np.zeros(top + 1, dtype=np.uint8 if self.num_classes < 256 else np.uint16)
        table[list(self.values)] = np.arange(self.num_classes)
        if self.ignore_index is not None and self.ignore_value is not None:
            table[self.ignore_value] = self.ignore_index
        return table[label]

    def to_values(self, indices: np.ndarray) -> np.ndarray:
        """Original values of a map of class indices (uint8, or uint16 above 255)."""
        values = list(self.values)
        if self.ignore_value is not None:
            values.append(self.ignore_value)
        table = np.asarray(values, dtype=np.uint8 if max(values) <= 255 else np.uint16)
        return table[indices]

    def class_names(self) -> dict[str, str]:
        """``dataset.json``'s ``classes``: training index (as a string) -> name."""
        return {str(i): name for i, name in enumerate(self.names)}


def build_label_map(
    values: Iterable[int], *, names: Mapping[int, str] | None = None, ignore: int | None = None,
) -> LabelMap:
    """The map of ``values`` (0 added) without ``ignore``; names default to ``class V``."""
    names = dict(names or {})
    found = sorted({0, *(int(v) for v in values)} - ({ignore} if ignore is not None else set()))
    if ignore is not None and ignore in names and ignore != 0:
        raise ConfigError(f"--ignore-label {ignore} is also declared as class "
                          f"{names[ignore]!r}; an ignored value is no class")
    if ignore == 0:
        raise ConfigError("--ignore-label 0: value 0 is the background class")
    label_names = tuple(names.get(v, "background" if v == 0 else f"class {v}") for v in found)
    try:
        return LabelMap(values=tuple(found), names=label_names, ignore_value=ignore)
    except ValidationError as exc:
        message = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise DataError(f"label map: {message}") from None


def identity_map(classes: Mapping[str, str]) -> LabelMap:
    """The map of a dataset prepared before label maps existed (values are the indices)."""
    values = sorted(int(k) for k in classes)
    names = {int(k): v for k, v in classes.items()}
    return build_label_map(range(values[-1] + 1) if values else [0], names=names)
