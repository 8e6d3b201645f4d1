"""The fused op's layout constants in Python agree with the C++/CUDA sources they mirror (no build needed)."""
import re
from pathlib import Path

from mcfast.diffusion import coefficients
from mcfast.ops import guided, step

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def _camel(name: str) -> str:
    """"logvar_min" → "klogvarmin": the C++ enumerator's name, compared case-insensitively."""
    return "k" + name.replace("_", "")


def test_cuda_tile_limit_matches_the_kernel():
    source = (CSRC / "cuda" / "kernels.cu").read_text(encoding="utf-8")
    match = re.search(r"constexpr\s+int64_t\s+kMaxTile\s*=\s*(\d+)\s*;", source)
    assert match, "kMaxTile not found in csrc/cuda/kernels.cu"
    assert guided.CUDA_MAX_FACTOR == int(match.group(1))


def test_table_columns_match_guided_plan_h():
    header = (CSRC / "guided_plan.h").read_text(encoding="utf-8")
    values = {name.lower(): int(v) for name, v in re.findall(r"\b(k\w+)\s*=\s*(\d+)", header)}
    for index, name in enumerate(coefficients.FUSED_COLUMNS):
        assert values[_camel(name)] == index, name
    assert values["knumcoefs"] == coefficients.NUM_COEFS
    for index, name in enumerate(step.PATCH_COLUMNS):
        assert values[_camel(name)] == index, name
    assert values["knumpatch"] == len(step.PATCH_COLUMNS)
    assert (values["kweightfull"], values["kweightpatch"], values["kweightmap"]) == \
        (step.WEIGHT_FULL, step.WEIGHT_PATCH, step.WEIGHT_MAP)
