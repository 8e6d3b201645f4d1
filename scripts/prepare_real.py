"""Prepare real data of ../shared/data into patient-split train / val folders (a data config in configs/).

    python scripts/prepare_real.py [--config configs/ct_real_data.toml] [--out data/ct_real]
    python scripts/prepare_real.py --config configs/mg_mias_data.toml --out data/mg_mias
    python scripts/prepare_real.py --config configs/mg_mias_data.toml --size 1024 --out data/mg_mias1024

``--size`` prepares the same split at another image size (MIAS's own 1024² for configs/mammo_mias1024.toml),
so the split is written once, in the data config.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from mcfast.errors import InputError
from mcfast.io.datasets import check_size
from mcfast.io.split_prepare import SplitDataConfig, prepare_split

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "ct_real_data.toml")
    ap.add_argument("--out", type=Path, default=REPO / "data" / "ct_real")
    ap.add_argument("--size", type=int, default=None, help="image size (default: the config's data.size)")
    args = ap.parse_args()
    try:
        config = SplitDataConfig.load(args.config, base=REPO)
        if args.size is not None:
            config = dataclasses.replace(config, size=check_size(args.size, "--size"))
        counts = prepare_split(config, args.out)
    except InputError as exc:  # one line naming the file or value, nonzero exit
        raise SystemExit(f"prepare_real: {exc}") from None
    print(f"prepared {counts} into {args.out}")


if __name__ == "__main__":
    main()
