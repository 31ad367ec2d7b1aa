"""NIH Pancreas-CT: the BCP/CoraNet h5 layout, or raw scans with CoraNet's preprocessing.

h5 layout (BCP commit f1e3f8e, PROTOCOLS.md 1.7): ``<root>/<NNNN>.h5`` with ``image`` (CT
already windowed to [-125, 275] HU, mapped to [0, 1], resampled to 1 mm and cropped) and
``label`` {0, 1}; split lists ``train_lab.txt`` (12), ``train_unlab.txt`` (50) and
``test.txt`` (18), one ``NNNN.h5`` (or ``NNNN``) a line, in ``<root>`` or a ``--lists``
folder. The labeled cases are the first N of train_lab followed by train_unlab.

Raw scans go through the generic path with :data:`RAW_PLAN`: window [-125, 275] HU onto
[0, 1], linear resampling to 1 mm, crop with a 25-voxel margin and at least 96 voxels per
axis: training cases with labels around their label (CoraNet's rule), every other case around
the body (Otsu foreground of the HU image). CoraNet crops its test cases around their labels too,
which tells the network where the pancreas is; we do not. CoraNet takes the in-plane spacing
as the spacing of every axis when it resamples; we use each axis's own spacing from the
header, which keeps the anatomy's shape.
"""

from __future__ import annotations

from pathlib import Path

from hco_cli.data.labels import build_label_map
from hco_cli.data.plan import PreprocessPlan
from hco_cli.data.sources import (
    SourceListing,
    check_case_id,
    check_unique,
    collect_h5_cases,
    read_list,
)
from hco_cli.errors import DataError

LIST_NAMES = ("train_lab.txt", "train_unlab.txt", "test.txt")
SPACING = (1.0, 1.0, 1.0)
CLASSES = {0: "background", 1: "pancreas"}
CT_WINDOW = (-125.0, 275.0)
UPSTREAM = ("BCP/CoraNet: CT windowed to [-125, 275] HU onto [0, 1], resampled to 1 mm and "
            "cropped around the pancreas; hco stores the images unchanged")
LABELS = build_label_map(CLASSES, names=CLASSES)
RAW_PLAN = PreprocessPlan(spacing=SPACING, norm="ct", ct_window=CT_WINDOW, crop="otsu",
                          crop_train_by_label=True, crop_margin=25, crop_min_size=(96, 96, 96),
                          labels=LABELS)


def read_split_lists(folder: Path) -> tuple[list[str], list[str], list[str]]:
    """Ids of train_lab.txt, train_unlab.txt and test.txt (``.h5`` suffixes removed)."""
    lists = []
    for name in LIST_NAMES:
        ids = [line[:-3] if line.endswith(".h5") else line for line in read_list(folder / name)]
        for case in ids:
            check_case_id(case, str(folder / name))
        lists.append(ids)
    check_unique(lists[0] + lists[1] + lists[2], f"{folder} ({', '.join(LIST_NAMES)})")
    return lists[0], lists[1], lists[2]


def list_pancreas_h5(
    root: Path, *, lists: Path | None = None, allow_missing: bool = False
) -> SourceListing:
    """Cases named by the three split lists; absent files are an error unless allowed."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"pancreas folder not found: {root}")
    labeled, unlabeled, test = read_split_lists(Path(lists) if lists else root)
    cases, skipped = collect_h5_cases(
        [(case, root / f"{case}.h5") for case in labeled + unlabeled + test],
        spacing=SPACING, named_in="the split lists", allow_missing=allow_missing)
    present = {c.case for c in cases}
    if not present:
        raise DataError(f"no pancreas case of the split lists found in {root}")
    return SourceListing(
        cases=cases, source=f"pancreas:{root.resolve()}", classes=dict(CLASSES), modality="CT",
        train_order=[c for c in labeled + unlabeled if c in present],
        test=[c for c in test if c in present], skipped=skipped,
    )


def default_labeled(lists: Path) -> int:
    """The protocol's labeled count: the length of train_lab.txt (12 in BCP)."""
    return len(read_list(lists / LIST_NAMES[0]))
