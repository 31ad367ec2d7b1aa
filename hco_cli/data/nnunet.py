"""A prepared dataset as an nnU-Net v2 raw dataset, so that the supervised nnU-Net baseline
trains on exactly hco's split.

Layout written into ``out`` (name it ``$nnUNet_raw/Dataset<ID>_<Name>``)::

    dataset.json         channel_names, labels, numTraining, file_ending (nnU-Net v2 keys)
    imagesTr/<case>_0000.nii.gz    one file per channel (_0001, ... for more channels)
    labelsTr/<case>.nii.gz
    imagesTs/, labelsTs/           the test split, where a val split exists (see below)
    splits_final.json    one fold: train = the labeled split, val = the val split

Choices, since the supervised baseline should see what hco's networks see:

- The cases are the prepared arrays (hco's spacing, crop and intensity normalisation) with
  their prepared geometry, so nnU-Net's predictions lie on the prepared grid. For the LA and
  pancreas h5 sources that is the grid of the source files.
- ``channel_names`` is ``noNorm``: the intensities are already normalised (z-score per image,
  or the CT window mapped to [0, 1]); nnU-Net's CT normalisation would expect Hounsfield
  units, and a second z-score would only add rounding.
- Labels are hco's training indices 0..K-1 (nnU-Net needs consecutive integers, background 0);
  an ignore label is index K, which is nnU-Net's own rule for ``"ignore"`` (the highest
  integer). ``hco_label_values`` in ``dataset.json`` maps the indices back to the original
  values.
- Only labeled cases are written: nnU-Net is supervised. Training cases are the labeled split
  (of ``fold`` where given); validation cases are the val split, or else the test split
  (nnU-Net needs a validation set for its final validation, which then predicts and scores
  the test cases; it does not select checkpoints on it). Test cases that are not the
  validation set go to ``imagesTs``/``labelsTs``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.io import write_volume
from hco_cli.errors import DataError
from hco_cli.io_utils import atomic_dir, write_json

Progress = Callable[[int, int, str], None]
FILE_ENDING = ".nii.gz"
CHANNEL_NAME = "noNorm"


@dataclass(frozen=True)
class NnunetExport:
    """What was written: the folder and the case ids of each part."""

    out: Path
    train: list[str]
    val: list[str]
    test: list[str]
    val_is_test: bool


def export_nnunet(dataset: Path, out: Path, *, fold: str | None = None, force: bool = False,
                  progress: Progress | None = None) -> NnunetExport:
    """Write ``dataset``'s labeled cases as an nnU-Net v2 raw dataset into ``out``."""
    data = PreparedDataset(Path(dataset))
    splits = data.splits.resolve(fold)
    train, val, test = splits["labeled"], splits["val"], splits["test"]
    val_is_test = not val
    if val_is_test:
        val, test = test, []
    if not train or not val:
        raise DataError(f"{data.root}: nnU-Net needs training and validation cases, but the "
                        f"labeled split has {len(train)} and neither val nor test has any; "
                        "prepare with --val K")
    parts = [("Tr", case) for case in (*train, *val)] + [("Ts", case) for case in test]
    missing = [case for _, case in parts if not data.has_label(case)]
    if missing:
        raise DataError(f"case {missing[0]} has no label in {data.root}: nnU-Net trains and "
                        "scores labeled cases only")
    if Path(out).exists() and any(Path(out).iterdir()) and not force:
        raise DataError(f"{out} already exists and is not empty; use --force to replace it")
    with atomic_dir(Path(out), kind="nnunet-export", force=force) as tmp:
        for i, (part, case) in enumerate(parts):
            _write_case(data, case, tmp, part)
            if progress is not None:
                progress(i + 1, len(parts), case)
        write_json(tmp / "dataset.json", dataset_json(data, len(train) + len(val)))
        write_json(tmp / "splits_final.json", [{"train": list(train), "val": list(val)}])
    return NnunetExport(out=Path(out), train=list(train), val=list(val), test=list(test),
                        val_is_test=val_is_test)


def dataset_json(data: PreparedDataset, num_training: int) -> dict[str, Any]:
    """nnU-Net v2's ``dataset.json`` for ``data`` (plus hco's label values and source)."""
    labels = data.labels
    names: dict[str, int] = {"background": 0}
    for index in range(1, labels.num_classes):
        name = labels.names[index]
        names[name if name not in names and name != "ignore" else f"{name} ({index})"] = index
    if labels.ignore_index is not None:
        names["ignore"] = labels.ignore_index
    return {
        "name": data.info.name,
        "description": f"hco prepared dataset {data.root} ({data.info.source})",
        "channel_names": {str(c): CHANNEL_NAME for c in range(data.info.channels)},
        "labels": names,
        "numTraining": num_training,
        "file_ending": FILE_ENDING,
        "hco_label_values": list(labels.values),
        "hco_modality": data.info.modality,
        "hco_normalization": data.info.normalization,
    }


def _write_case(data: PreparedDataset, case: str, root: Path, part: str) -> None:
    image = data.image(case)
    geometry = data.geometry(case).prepared
    for channel in range(image.shape[0]):
        write_volume(root / f"images{part}" / f"{case}_{channel:04d}{FILE_ENDING}",
                     image[channel].astype("float32"), geometry)
    write_volume(root / f"labels{part}" / f"{case}{FILE_ENDING}", data.label(case)[...],
                 geometry)
