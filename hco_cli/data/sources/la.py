"""Left Atrium (2018 challenge) in the UA-MT/BCP layout.

``<root>/2018LA_Seg_Training Set/<CASE>/mri_norm2.h5`` (``image`` float32, already z-scored
and cropped; ``label`` uint8 {0, 1}) plus ``<root>/train.list`` and ``<root>/test.list``.
The files carry no geometry: the voxels are 0.625 mm isotropic (UA-MT's preprocessing).
"""

from __future__ import annotations

from pathlib import Path

from hco_cli.data.sources import (
    SourceListing,
    check_case_id,
    check_unique,
    collect_h5_cases,
    read_list,
)
from hco_cli.errors import DataError

IMAGE_DIR = "2018LA_Seg_Training Set"
FILE_NAME = "mri_norm2.h5"
SPACING = (0.625, 0.625, 0.625)
CLASSES = {0: "background", 1: "left atrium"}
UPSTREAM = ("UA-MT: each volume z-scored (whole volume) and cropped around the atrium; "
            "hco stores the images unchanged")


def case_file(root: Path, case: str) -> Path:
    return root / IMAGE_DIR / case / FILE_NAME


def list_la(root: Path, *, allow_missing: bool = False) -> SourceListing:
    """Cases named by train.list and test.list; absent ones are an error unless allowed."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"LA folder not found: {root}")
    train = read_list(root / "train.list")
    test = read_list(root / "test.list")
    for name, ids in (("train.list", train), ("test.list", test)):
        check_unique(ids, str(root / name))
        for case in ids:
            check_case_id(case, str(root / name))
    both = sorted(set(train) & set(test))
    if both:
        raise DataError(
            f"case {both[0]}: duplicate case id, named in both train.list and test.list"
        )
    cases, skipped = [], []
    for list_name, ids in (("train.list", train), ("test.list", test)):
        found, missing = collect_h5_cases([(case, case_file(root, case)) for case in ids],
                                          spacing=SPACING, named_in=list_name,
                                          allow_missing=allow_missing)
        cases += found
        skipped += missing
    present = {c.case for c in cases}
    if not present:
        raise DataError(f"no LA case of train.list or test.list found under {root / IMAGE_DIR}")
    return SourceListing(
        cases=cases,
        source=f"la:{root.resolve()}",
        classes=dict(CLASSES),
        modality="MR",
        train_order=[c for c in train if c in present],
        test=[c for c in test if c in present],
        skipped=skipped,
    )
