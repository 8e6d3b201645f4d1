"""Prepare real data of ../shared/data into patient-split train / val folders (a data config in configs/).

    python scripts/prepare_real.py [--config configs/ct_real_data.toml] [--out data/ct_real]
    python scripts/prepare_real.py --config configs/mg_mias_data.toml --out data/mg_mias
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mcfast.io.split_prepare import SplitDataConfig, prepare_split

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "ct_real_data.toml")
    ap.add_argument("--out", type=Path, default=REPO / "data" / "ct_real")
    args = ap.parse_args()
    config = SplitDataConfig.load(args.config, base=REPO)
    counts = prepare_split(config, args.out)
    print(f"prepared {counts} into {args.out}")


if __name__ == "__main__":
    main()
