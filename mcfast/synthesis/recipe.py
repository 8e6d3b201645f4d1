"""Synthesis recipes: a TOML file that says what to make and how to steer the sampler.

A recipe names the modality, the anatomy reference (a B-spline phantom, a DICOM
slice or an image) with its ILVR factor and stop step, one or more pathology
sources with theirs, the sampler settings and the outputs. Every value is
checked here so that a mistake is reported as one line naming the key.
"""
from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mcfast.diffusion.samplers import FUSABLE_METHODS, METHODS
from mcfast.diffusion.eps_scaling import check_eps_scale
from mcfast.errors import InputError
from mcfast.pathology.transform import MATCH_LOWS
# One list of source names and one patch-size bound, shared with the code that serves them.
from mcfast.synthesis.sources import ANATOMY_SOURCES, PATHOLOGY_SOURCES, patch_side_range
from mcfast.constants import BACKENDS, MODALITIES  # one list, shared with the CLI and guidance

FILTERS = ("box", "bicubic")
# Which pixels an MG patch's intensities are matched to: the whole breast tissue mask, or the tissue in
# a window around where the lesion was placed (see mcfast.synthesis.plan.matching_region).
MATCH_REGIONS = ("breast", "local")
T_MAX = 1000


@dataclass
class SamplerSpec:
    method: str = "ddpm"
    steps: str = "100"
    eta: float = 0.0
    clip_denoised: bool = True
    backend: str = "auto"
    batch_size: int = 4
    start_step: int = 1000  # SDEdit: start from the anatomy noised to this step (1000 = from pure noise)
    # Also move each step's x0 prediction onto the references (DDNM-style); see mcfast.diffusion.samplers.
    x0_guidance: bool = False
    # Epsilon scaling (mcfast.diffusion.eps_scaling): the network's ε is divided by this (1 = off).
    eps_scale: float = 1.0
    # Steps below this timestep (1000-step scale) are deterministic DDIM steps: no fresh noise at the lowest
    # noise levels, where the network leaves it in the image as grain (0 = off; see sample()).
    deterministic_below: int = 0


@dataclass
class AnatomySpec:
    source: str = "phantom"
    path: str = ""
    factor: int = 4
    stop_step: int = 200
    filter: str = "box"
    slice_index: int = -1  # for a DICOM series: -1 = a random slice per item
    # source = "prepared": draw a patient / woman first, then one of their images, so a patient with many
    # slices is not drawn more often (mcfast.synthesis.sources.draw_order).
    per_patient: bool = False
    # Hold the sample to the reference, pixel for pixel and to the last step, where the reference is scanner
    # padding (outside the reconstructed field of view; mcfast.anatomy.masks.padding_mask).
    keep_padding: bool = False
    # With keep_padding: also hold the first this many pixels of the image beside the padding (a film's skin
    # line: the model draws the breast edge as a ramp about 5 pixels wide where a film has a step; 0 = off).
    padding_band: int = 0
    # CT only: outside the body (mcfast.anatomy.masks.body_mask of the reference) guide at this finer factor
    # down to outside_stop_step instead of at factor / stop_step (0 = off; mcfast.synthesis.plan.outside_body_weight).
    outside_factor: int = 0
    outside_stop_step: int = 0
    # CT phantom only: draw the scanner's reconstruction circle (padding at the floor outside it), as a real
    # slice has (mcfast.anatomy.phantom.lung_phantom_labels).
    scan_circle: bool = False
    # CT phantom only: its chest wall (mcfast.anatomy.phantom.WALLS: "ring" or "muscles") and the range its
    # blood pool's HU is drawn from per item (40: unenhanced blood; 150-300: a contrast-enhanced scan).
    phantom_wall: str = "ring"
    phantom_blood_hu: tuple[int, int] = (40, 40)


@dataclass
class PathologySpec:
    source: str = "synthetic"
    path: str = ""
    count: tuple[int, int] = (1, 1)
    size: tuple[int, int] = (8, 16)
    factor: int = 1
    stop_step: int = 0
    filter: str = "box"
    sigma_scale: float = 0.5
    min_overlap: float = 0.9
    category: str = "nodule"
    match_region: str = "breast"  # MG only: "breast" (whole tissue mask) or "local" (tissue around the lesion)
    # MG only: the low end of the range the patch is rescaled to, the region's minimum ("min", the paper's) or
    # its quantile 1 - q ("mirror"; mcfast.pathology.transform.reference_range says why)
    match_low: str = "min"


@dataclass
class OutputSpec:
    npy: bool = True
    png: bool = True
    dicom: bool = False
    seg: bool = False
    full_paths: bool = False  # meta.json / provenance.json keep full source paths (default: folders hashed)


@dataclass
class RecipeSpec:
    """The [recipe] table: modality, image size and seed."""
    modality: str = "ct"
    image_size: int = 64
    seed: int = 0


@dataclass
class Recipe:
    modality: str = "ct"
    image_size: int = 64
    seed: int = 0
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    anatomy: AnatomySpec = field(default_factory=AnatomySpec)
    pathology: list[PathologySpec] = field(default_factory=list)
    output: OutputSpec = field(default_factory=OutputSpec)
    source: str = "<defaults>"

    def to_dict(self) -> dict[str, Any]:
        """Every setting, with the recipe file and the files it names as absolute paths: the identity of a
        run (``synthesize`` resumes a folder only for the same recipe), which must not depend on whether
        a path was written relative or absolute, or on the working folder a relative one was resolved in."""
        data = asdict(self)
        if not self.source.startswith("<"):
            data["source"] = _absolute(self.source)
        if data["anatomy"]["path"]:
            data["anatomy"]["path"] = _absolute(data["anatomy"]["path"])
        for p in data["pathology"]:
            if p["path"]:
                p["path"] = _absolute(p["path"])
        return data


def _absolute(path: str) -> str:
    import os

    return os.path.abspath(os.path.expanduser(path))


def _pair(value: Any, key: str, where: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        lo, hi = int(value[0]), int(value[1])
        if lo > hi:
            raise InputError(f"{where}: {key} = {list(value)} has min > max")
        return (lo, hi)
    raise InputError(f"{where}: {key} must be an integer or [min, max], got {value!r}")


def _kind(value: Any) -> str:
    """How TOML spelled ``value``, for messages: "the string 'nodule'", "the integer 5", "an array"."""
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, list):
        return f"an array {value!r}"
    return f"{type(value).__name__} {value!r}"


def _fill(cls, table: dict[str, Any], where: str, section: str):
    if not isinstance(table, dict):
        raise InputError(f"{where}: [{section}] must be a table of settings ([{section}] with key = value lines), "
                         f"got {_kind(table)}")
    known = {f for f in cls.__dataclass_fields__}
    unknown = sorted(set(table) - known)
    if unknown:
        raise InputError(f"{where}: unknown key(s) in [{section}]: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    obj = cls()
    for key, value in table.items():
        default = getattr(obj, key)
        if isinstance(default, tuple):
            value = _pair(value, f"{section}.{key}", where)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise InputError(f"{where}: {section}.{key} must be true or false, got {value!r}")
        elif isinstance(default, int) and not isinstance(default, bool):
            if not isinstance(value, int) or isinstance(value, bool):
                raise InputError(f"{where}: {section}.{key} must be an integer, got {value!r}")
        elif isinstance(default, float):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise InputError(f"{where}: {section}.{key} must be a number, got {value!r}")
            value = float(value)
        elif isinstance(default, str) and not isinstance(value, str):
            raise InputError(f"{where}: {section}.{key} must be a string, got {value!r}")
        setattr(obj, key, value)
    return obj


def _check_choice(value: str, choices: tuple[str, ...], key: str, where: str) -> None:
    if value not in choices:
        raise InputError(f"{where}: {key} = {value!r} is not one of {', '.join(choices)}")


def _check_guidance(factor: int, stop_step: int, filt: str, size: int, key: str, where: str) -> None:
    if factor < 1 or size % factor:
        raise InputError(f"{where}: {key}.factor = {factor} does not divide image_size = {size}")
    if not 0 <= stop_step <= T_MAX:
        raise InputError(f"{where}: {key}.stop_step = {stop_step} is outside [0, {T_MAX}] (the 1000-step scale)")
    _check_choice(filt, FILTERS, f"{key}.filter", where)


# The fast mode: the sampler, guidance and number of network calls that docs/results/steps.md picks by
# the rule fixed in configs/steps_study.toml (the fewest calls at the realism of 250 ancestral steps; at
# 10 calls DDIM η = 0.5 and DPM-Solver++(2M), both with x̂₀ guidance, met it, DDIM by 0.02 s per image).
# The study ran without epsilon scaling, so the fast mode turns it off.
FAST_SAMPLER = {"method": "ddim", "eta": 0.5, "x0_guidance": True, "eps_scale": 1.0}
FAST_CALLS = 10


def use_fast_sampler(recipe: Recipe, calls: int = FAST_CALLS) -> Recipe:
    """``recipe`` switched to the fast mode: :data:`FAST_SAMPLER` with the respacing that makes
    ``calls`` network calls from the recipe's SDEdit start (validated)."""
    from mcfast.diffusion.samplers import respacing_for_calls

    for key, value in FAST_SAMPLER.items():
        setattr(recipe.sampler, key, value)
    recipe.sampler.steps = respacing_for_calls(calls, recipe.sampler.start_step)
    if recipe.sampler.backend == "fused":
        recipe.sampler.backend = "auto"
    return validate(recipe)


def validate(recipe: Recipe) -> Recipe:
    where = recipe.source
    _check_choice(recipe.modality, MODALITIES, "recipe.modality", where)
    if recipe.image_size < 8 or recipe.image_size % 8:
        raise InputError(f"{where}: recipe.image_size = {recipe.image_size} must be a multiple of 8 (≥ 8)")
    s = recipe.sampler
    _check_choice(s.method, METHODS, "sampler.method", where)
    if not s.eta >= 0:
        raise InputError(f"{where}: sampler.eta = {s.eta} must be >= 0")
    check_eps_scale(s.eps_scale, f"{where}: sampler.eps_scale")
    _check_choice(s.backend, BACKENDS, "sampler.backend", where)
    if s.backend == "fused" and (s.method not in FUSABLE_METHODS or s.x0_guidance):
        raise InputError(f"{where}: sampler.backend 'fused' serves only ddpm / ddim steps without x0_guidance "
                         f"(got method {s.method!r}, x0_guidance = {str(s.x0_guidance).lower()}); use 'auto'")
    if s.batch_size < 1:
        raise InputError(f"{where}: sampler.batch_size must be ≥ 1")
    if isinstance(s.deterministic_below, bool) or not isinstance(s.deterministic_below, int) \
            or not 0 <= s.deterministic_below <= T_MAX:
        raise InputError(f"{where}: sampler.deterministic_below = {s.deterministic_below!r} must be an integer in "
                         f"[0, {T_MAX}] (the 1000-step scale)")
    if not 1 <= s.start_step <= T_MAX:
        raise InputError(f"{where}: sampler.start_step = {s.start_step} is outside [1, {T_MAX}] (the 1000-step scale)")
    a = recipe.anatomy
    _check_choice(a.source, ANATOMY_SOURCES, "anatomy.source", where)
    if a.source != "phantom" and not a.path:
        raise InputError(f"{where}: anatomy.source = {a.source!r} needs anatomy.path")
    _check_guidance(a.factor, a.stop_step, a.filter, recipe.image_size, "anatomy", where)
    if not 0 <= a.padding_band <= recipe.image_size // 8:
        raise InputError(f"{where}: anatomy.padding_band = {a.padding_band} must lie in [0, image_size/8 = "
                         f"{recipe.image_size // 8}] pixels")
    if a.padding_band and not a.keep_padding:
        raise InputError(f"{where}: anatomy.padding_band = {a.padding_band} holds pixels beside the kept padding; "
                         "it needs anatomy.keep_padding = true")
    if a.outside_factor:
        if recipe.modality != "ct":
            raise InputError(f"{where}: anatomy.outside_factor guides the air around a CT body; it needs "
                             f"recipe.modality = 'ct' (a mammogram's background is its padding: keep_padding)")
        _check_guidance(a.outside_factor, a.outside_stop_step, a.filter, recipe.image_size, "anatomy.outside", where)
    elif a.outside_stop_step:
        raise InputError(f"{where}: anatomy.outside_stop_step = {a.outside_stop_step} needs anatomy.outside_factor")
    if a.per_patient and a.source != "prepared":
        raise InputError(f"{where}: anatomy.per_patient draws from a prepared folder's patients; it needs "
                         f"anatomy.source = 'prepared', got {a.source!r}")
    if a.scan_circle and (a.source != "phantom" or recipe.modality != "ct"):
        raise InputError(f"{where}: anatomy.scan_circle draws a CT phantom's reconstruction circle; it needs "
                         f"anatomy.source = 'phantom' and recipe.modality = 'ct' (a real slice has its own)")
    from mcfast.anatomy.phantom import BLOOD_HU_RANGE, WALLS

    _check_choice(a.phantom_wall, WALLS, "anatomy.phantom_wall", where)
    if not BLOOD_HU_RANGE[0] <= a.phantom_blood_hu[0] <= a.phantom_blood_hu[1] <= BLOOD_HU_RANGE[1]:
        raise InputError(f"{where}: anatomy.phantom_blood_hu = {list(a.phantom_blood_hu)} must lie in "
                         f"[{BLOOD_HU_RANGE[0]}, {BLOOD_HU_RANGE[1]}] HU")
    plain = AnatomySpec()  # the phantom as it is drawn without the options
    if (a.phantom_wall, a.phantom_blood_hu) != (plain.phantom_wall, plain.phantom_blood_hu) and (
            a.source != "phantom" or recipe.modality != "ct"):
        raise InputError(f"{where}: anatomy.phantom_wall and phantom_blood_hu shape a CT phantom; they need "
                         f"anatomy.source = 'phantom' and recipe.modality = 'ct'")
    for k, p in enumerate(recipe.pathology):
        key = f"pathology[{k}]"
        _check_choice(p.source, PATHOLOGY_SOURCES, f"{key}.source", where)
        if p.source not in ("synthetic",) and not p.path:
            raise InputError(f"{where}: {key}.source = {p.source!r} needs {key}.path")
        _check_guidance(p.factor, p.stop_step, p.filter, recipe.image_size, key, where)
        if p.count[0] < 0 or p.count[1] > 8:
            raise InputError(f"{where}: {key}.count must lie in [0, 8], got {list(p.count)}")
        lo, hi = patch_side_range(p.source)
        hi = recipe.image_size // 2 if hi is None else min(hi, recipe.image_size // 2)
        if p.size[0] < lo or p.size[1] > hi:
            raise InputError(f"{where}: {key}.size = {list(p.size)} must lie in [{lo}, {hi}] for source "
                             f"{p.source!r} (at most image_size/2 = {recipe.image_size // 2})")
        if not 0.0 < p.min_overlap <= 1.0:
            raise InputError(f"{where}: {key}.min_overlap must lie in (0, 1], got {p.min_overlap}")
        if p.sigma_scale <= 0:
            raise InputError(f"{where}: {key}.sigma_scale must be > 0, got {p.sigma_scale}")
        for name, choices in (("match_region", MATCH_REGIONS), ("match_low", MATCH_LOWS)):
            value = getattr(p, name)
            _check_choice(value, choices, f"{key}.{name}", where)
            if recipe.modality != "mg" and value != getattr(PathologySpec, name):
                raise InputError(f"{where}: {key}.{name} = {value!r} applies to modality 'mg' only "
                                 f"(CT patches keep their HU)")
    return recipe


def recipe_from_dict(data: dict[str, Any], source: str = "<dict>") -> Recipe:
    data = dict(data)
    known = {"recipe", "sampler", "anatomy", "pathology", "output"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"{source}: unknown section(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    top = _fill(RecipeSpec, data.get("recipe", {}), source, "recipe")
    pathology = data.get("pathology", [])
    if isinstance(pathology, dict):
        pathology = [pathology]
    elif not isinstance(pathology, list):
        raise InputError(f"{source}: pathology must be a table ([pathology]) or an array of tables "
                         f"([[pathology]] sections), got {_kind(pathology)}")
    for k, p in enumerate(pathology):
        if not isinstance(p, dict):
            raise InputError(f"{source}: pathology[{k}] must be a table of settings ([[pathology]] with "
                             f"source = ..., size = ... lines), got {_kind(p)}")
    recipe = Recipe(
        modality=top.modality, image_size=top.image_size, seed=top.seed,
        sampler=_fill(SamplerSpec, data.get("sampler", {}), source, "sampler"),
        anatomy=_fill(AnatomySpec, data.get("anatomy", {}), source, "anatomy"),
        pathology=[_fill(PathologySpec, p, source, "pathology") for p in pathology],
        output=_fill(OutputSpec, data.get("output", {}), source, "output"),
        source=source,
    )
    return validate(recipe)


def recipe_tables(recipe: Recipe) -> dict[str, Any]:
    """``recipe`` in the layout of a TOML recipe (what :func:`recipe_from_dict` reads), paths as written."""
    data = asdict(recipe)
    return {"recipe": {"modality": recipe.modality, "image_size": recipe.image_size, "seed": recipe.seed},
            "sampler": data["sampler"], "anatomy": data["anatomy"], "pathology": data["pathology"],
            "output": data["output"]}


def with_settings(recipe: Recipe, /, **sections: Any) -> Recipe:
    """A new validated recipe: ``recipe`` with the given keys of each section replaced, e.g.
    ``with_settings(r, sampler={"steps": "20"}, recipe={"seed": 3})``; ``pathology`` replaces the whole list
    (a list of tables). Errors name the key as a recipe file's would."""
    tables = recipe_tables(recipe)
    for section, values in sections.items():
        if section == "pathology":
            tables["pathology"] = values
        elif section in tables and isinstance(values, dict):
            tables[section] = {**tables[section], **values}
        else:
            raise InputError(f"{recipe.source}: cannot set section {section!r} to {_kind(values)}")
    return recipe_from_dict(tables, source=recipe.source)


def load_recipe(path: str | Path) -> Recipe:
    from mcfast.io.paths import os_error_line

    path = Path(path)
    if not path.is_file():
        try:
            path.stat()
        except FileNotFoundError:
            raise InputError(f"{path}: recipe file not found") from None
        except OSError as exc:  # a symlink loop is not "not found"
            raise InputError(os_error_line(exc, path)) from None
        raise InputError(f"{path}: is a folder, expected a recipe file (TOML)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a valid TOML recipe ({exc})") from None
    except OSError as exc:
        raise InputError(os_error_line(exc, path)) from None
    return recipe_from_dict(data, source=str(path))
