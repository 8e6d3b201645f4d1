"""The Python front door: load a model, make annotated images in memory, save them as the CLI does.

    synth = Synthesizer.from_pretrained("ct")            # the shipped real-CT model and its demo recipe
    items = synth.generate(n=4, seed=0, steps=50)         # list[SyntheticImage]
    items[0].image, items[0].masks, items[0].boxes        # HU, one bool mask and one COCO box per lesion
    save(items, "out/", formats=("png", "npy", "dicom", "seg"))   # item folders + coco.json

Every setting is a recipe setting (:mod:`mcfast.synthesis.recipe`), so an API call and ``mcfast
synthesize`` with the same recipe, model, seed and precision make the same images: both sample through
:meth:`mcfast.synthesis.pipeline.RunSampler.batches`, and an item's image depends on (seed, index) only.
The CLI's ``synthesize`` and ``demo`` commands run through :func:`build_recipe` and :class:`Synthesizer`.
docs/api.md has runnable examples (doctests of the test suite).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from mcfast.errors import InputError
from mcfast.synthesis.recipe import AnatomySpec, PathologySpec, Recipe, load_recipe, use_fast_sampler, with_settings

FORMATS = ("png", "npy", "dicom", "seg")
DEFAULT_FORMATS = ("png", "npy")
# Shipped model names: "ct" / "mg" are the defaults of mcfast.demo.defaults; "ct:phantom64" picks another.
SEPARATOR = ":"
ARRAY_SOURCE = "<array>"  # how meta.json names an anatomy given as an array


# -- recipes ------------------------------------------------------------------------------------------------
def _as_recipe(recipe: Recipe | str | Path) -> Recipe:
    return copy.deepcopy(recipe) if isinstance(recipe, Recipe) else load_recipe(recipe)


def _anatomy_table(anatomy: Any) -> dict[str, Any]:
    """The [anatomy] keys a non-array ``anatomy`` argument stands for."""
    if isinstance(anatomy, AnatomySpec):
        return asdict(anatomy)
    if isinstance(anatomy, dict):
        return dict(anatomy)
    if isinstance(anatomy, str) and anatomy == "phantom":
        return {"source": "phantom", "path": ""}
    if isinstance(anatomy, (str, Path)):
        path = Path(anatomy)
        if not path.exists():
            raise InputError(f"{path}: anatomy path not found (give 'phantom', a DICOM file or series folder, "
                             "an image, a folder of images or one made by 'mcfast prepare')")
        if path.is_dir():
            source = "prepared" if (path / "manifest.json").is_file() else "folder"
        else:
            source = "file"
        return {"source": source, "path": str(path)}
    raise InputError(f"anatomy must be 'phantom', a path, a dict of [anatomy] settings or a 2-D array, "
                     f"got {type(anatomy).__name__}")


def _pathology_list(lesions: Any, base: list[PathologySpec], where: str) -> list[dict[str, Any]]:
    """The [[pathology]] tables a ``lesions`` argument stands for: an int k = exactly k lesions of the
    recipe's first kind; a dict = the recipe's first kind with those keys replaced (all PathologySpec
    defaults when the recipe has none); a PathologySpec = that kind as it is; a list of them; 0 or [] = none."""
    if isinstance(lesions, bool):
        raise InputError(f"lesions must be a count, a dict, a PathologySpec or a list of them, got {lesions!r}")
    if isinstance(lesions, int):
        if lesions < 0:
            raise InputError(f"lesions = {lesions} must be >= 0")
        if lesions == 0:
            return []
        return [{**(asdict(base[0]) if base else {}), "count": [lesions, lesions]}]
    if isinstance(lesions, (dict, PathologySpec)):
        lesions = [lesions]
    if not isinstance(lesions, (list, tuple)):
        raise InputError(f"lesions must be a count, a dict, a PathologySpec or a list of them, "
                         f"got {type(lesions).__name__}")
    kind = asdict(base[0]) if base else {}
    tables = []
    for k, item in enumerate(lesions):
        if isinstance(item, PathologySpec):
            tables.append(asdict(item))
        elif isinstance(item, dict):
            changed = dict(item)
            if changed.get("source", kind.get("source")) != kind.get("source"):
                changed.setdefault("path", "")  # another source does not inherit the recipe's path
            tables.append({**kind, **changed})
        else:
            raise InputError(f"{where}: lesions[{k}] must be a dict of [[pathology]] settings or a PathologySpec, "
                             f"got {type(item).__name__}")
    return tables


def build_recipe(recipe: Recipe | str | Path, *, anatomy: Any = None, lesions: Any = None, seed: int | None = None,
                 image_size: int | None = None, steps: int | str | None = None, sampler: str | None = None,
                 eta: float | None = None, start_step: int | None = None, x0_guidance: bool | None = None,
                 eps_scale: float | None = None, deterministic_below: int | None = None, backend: str | None = None,
                 batch_size: int | None = None, fast: bool = False, formats: Sequence[str] | None = None, check_sources: bool = True) -> Recipe:
    """A validated copy of ``recipe`` (a Recipe or a TOML path) with the given settings replaced.

    ``anatomy``: "phantom", a path (DICOM file or series folder, image, image folder, prepared folder) or
    a dict of [anatomy] keys (``{"source": "phantom", "factor": 16}``); arrays are :meth:`Synthesizer.generate`'s.
    ``lesions``: see :func:`_pathology_list`. ``steps``: the respacing ("50", "ddim25", "50+tail9", 50). ``fast``: the
    fast mode (:func:`mcfast.synthesis.recipe.use_fast_sampler`), applied last. ``formats``: the files
    :func:`save` and ``synthesize`` write (``FORMATS``). ``check_sources``: the files the recipe names
    exist and hold what it needs (before a model is loaded). Errors are one line naming the setting."""
    recipe = _as_recipe(recipe)
    sections: dict[str, Any] = {}
    top = {key: value for key, value in (("seed", seed), ("image_size", image_size)) if value is not None}
    if top:
        sections["recipe"] = top
    sampler_keys = {"steps": None if steps is None else str(steps), "method": sampler, "eta": eta,
                    "start_step": start_step, "x0_guidance": x0_guidance, "eps_scale": eps_scale,
                    "deterministic_below": deterministic_below, "backend": backend, "batch_size": batch_size}
    sampler_keys = {key: value for key, value in sampler_keys.items() if value is not None}
    if sampler_keys:
        sections["sampler"] = sampler_keys
    if anatomy is not None:
        sections["anatomy"] = _anatomy_table(anatomy)
    if lesions is not None:
        sections["pathology"] = _pathology_list(lesions, recipe.pathology, recipe.source)
    if formats is not None:
        sections["output"] = _output_table(formats)
    if sections:
        recipe = with_settings(recipe, **sections)
    if fast:
        use_fast_sampler(recipe)
    if check_sources:
        from mcfast.synthesis.sources import check_recipe_sources

        check_recipe_sources(recipe)
    return recipe


def _output_table(formats: Sequence[str] | str) -> dict[str, bool]:
    if isinstance(formats, str):
        formats = (formats,)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise InputError(f"unknown output format(s) {', '.join(map(repr, unknown))} (known: {', '.join(FORMATS)})")
    # The display PNG and mask.png are always written (COCO points to them); "png" adds the other windows,
    # the references and the overlay. A SEG refers to its image, so "seg" writes the DICOM image too.
    return {"npy": "npy" in formats, "png": "png" in formats, "dicom": "dicom" in formats or "seg" in formats,
            "seg": "seg" in formats}


# -- items ----------------------------------------------------------------------------------------------
@dataclass
class SyntheticImage:
    """One annotated synthetic image, in memory.

    ``image``: (H, W) float32, HU for CT, [0, 1] for mammograms (dense tissue bright). ``masks``: one
    (H, W) bool mask per inserted lesion, exactly where guidance put it; ``labels``: the same as one uint8
    map (lesion k = k); ``boxes``: COCO [x, y, w, h] per lesion; ``categories``; ``meta``: what meta.json
    holds (seed, anatomy, lesion sources and classes, guidance conditions, sampler)."""

    index: int
    seed: int
    modality: str
    model_image: np.ndarray = field(repr=False)  # (H, W) in model space [-1, 1], as the sampler left it
    plan: Any = field(repr=False)  # mcfast.synthesis.plan.ItemPlan
    sampling: dict = field(default_factory=dict, repr=False)
    output: Any = field(default=None, repr=False)  # the recipe's OutputSpec (default formats of save)

    def __repr__(self) -> str:
        h, w = self.model_image.shape
        return (f"SyntheticImage(index={self.index}, modality={self.modality!r}, size={h}x{w}, "
                f"lesions={self.categories})")

    @property
    def image(self) -> np.ndarray:
        from mcfast.synthesis.plan import from_model

        return from_model(self.modality, self.model_image)

    @property
    def masks(self) -> list[np.ndarray]:
        return [lesion.mask.astype(bool) for lesion in self.plan.lesions]

    @property
    def labels(self) -> np.ndarray:
        from mcfast.synthesis.outputs import label_map

        return label_map(self.plan, self.model_image.shape)

    @property
    def boxes(self) -> list[list[int]]:
        return [list(lesion.box) for lesion in self.plan.lesions]

    @property
    def categories(self) -> list[str]:
        return [lesion.category for lesion in self.plan.lesions]

    @property
    def anatomy(self) -> np.ndarray:
        """The anatomy reference the image was guided by (HU or [0, 1], at the image's size)."""
        return self.plan.anatomy.values

    @property
    def meta(self) -> dict:
        from mcfast.synthesis.outputs import item_meta

        return item_meta(self.plan, self.model_image.shape, self.modality, self.output, dict(self.sampling))

    def save(self, out: str | Path, formats: Sequence[str] | None = None) -> Path:
        """Write this item's files into ``out/<index as 6 digits>/`` as ``mcfast synthesize`` does
        (meta.json last); ``formats`` from :data:`FORMATS` (default: the recipe's outputs). Returns the folder."""
        from mcfast.synthesis import outputs
        from mcfast.synthesis.recipe import OutputSpec

        out = Path(out)
        _check_writable(out)
        spec = self.output if formats is None else OutputSpec(**_output_table(formats))
        spec = spec if spec is not None else OutputSpec()
        outputs.write_item(out, self.plan, self.model_image, self.modality, spec, dict(self.sampling))
        return outputs.item_dir(out, self.index)


def _check_writable(out: Path) -> None:
    from mcfast.io.paths import make_out_dir

    make_out_dir(out, "out")  # checks first (check_out_dir), then creates


def _one_modality(items: Sequence[SyntheticImage]) -> str:
    modalities = {item.modality for item in items}
    if len(modalities) > 1:
        raise InputError(f"items of several modalities ({', '.join(sorted(modalities))}) cannot share one COCO file")
    if not modalities:
        raise InputError("no items given")
    return modalities.pop()


def _coco_writer(items: Sequence[SyntheticImage]):
    from mcfast.io.coco import CocoWriter
    from mcfast.synthesis.outputs import add_coco_item

    modality = _one_modality(items)
    coco = CocoWriter(info={"description": "mcfast synthetic images", "version": "1.0", "modality": modality})
    for item in items:
        add_coco_item(coco, item.index, modality, item.meta, item.labels)
    return coco


def to_coco(items: Sequence[SyntheticImage]) -> dict:
    """COCO (instances, RLE masks) of ``items``, file names as :func:`save` writes them."""
    return _coco_writer(list(items)).to_dict()


def save(items: Iterable[SyntheticImage], out: str | Path, formats: Sequence[str] | None = None) -> Path:
    """Write every item (``SyntheticImage.save``) and one ``coco.json`` for them into ``out``; returns its path."""
    items = list(items)
    coco = _coco_writer(items)  # a mix of modalities is refused before anything is written
    out = Path(out)
    for item in items:
        item.save(out, formats)
    return coco.save(out / "coco.json")


# -- the synthesizer ------------------------------------------------------------------------------------
def resolve_model(model: str | Path) -> tuple[Path, Path | None]:
    """(model folder, its default recipe or None) for a shipped name ("ct", "mg", "ct:phantom64", ...) or
    a run / asset folder."""
    from mcfast.demo.defaults import MODALITIES, default_checkpoint, demo_recipe

    name = str(model)
    modality, _, variant = name.partition(SEPARATOR)
    if modality in MODALITIES and not Path(name).exists():
        return default_checkpoint(modality, variant or None), demo_recipe(modality, variant or None)
    path = Path(model)
    if not path.exists():
        raise InputError(f"{path}: no such model folder (and not a shipped name: ct, mg, ct:phantom64, mg:phantom64)")
    return path, None


def _default_recipe(engine) -> Recipe:
    """The demo recipe matching a run's modality and size, at the size the run was trained on when that
    is smaller than the recipe's (a 64² phantom run)."""
    from mcfast.demo.defaults import demo_recipe

    modality = engine.modality if engine.modality in ("ct", "mg") else "ct"
    size = engine.trained_size
    recipe = load_recipe(demo_recipe(modality, "real" if size >= 256 or size == 0 else "phantom64"))
    if 0 < size < recipe.image_size:
        recipe = with_settings(recipe, recipe={"image_size": size})
    return recipe


class Synthesizer:
    """A model loaded once, with a default recipe; makes annotated images in memory or into a folder.

    Build it with :meth:`from_pretrained`. ``precision`` "fp32" (the CLI's default: bit-identical to
    ``mcfast synthesize``), "bf16" (about 2x faster on a CPU with AVX-512 BF16, slower on one without),
    "fp16" (GPU) or "auto" (the device's fastest: :func:`mcfast.models.inference.fastest_precision`)."""

    def __init__(self, engine, recipe: Recipe):
        self.engine = engine
        self.recipe = recipe

    @classmethod
    def from_pretrained(cls, model: str | Path = "ct", *, recipe: Recipe | str | Path | None = None,
                        device: str | None = None, precision: str = "fp32",
                        channels_last: bool = False) -> "Synthesizer":
        """Load ``model``: "ct" / "mg" (the shipped real-scan defaults), "ct:phantom64" / "mg:phantom64"
        (the 64² phantom models), or a run folder of ``mcfast train`` / a shipped asset folder.
        ``recipe``: the default settings of :meth:`generate` (default: the shipped model's demo recipe,
        else the demo recipe of the run's modality)."""
        from mcfast.models.inference import PRECISIONS, fastest_precision
        from mcfast.synthesis.pipeline import RunSampler

        if precision not in (*PRECISIONS, "auto"):
            raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}, auto")
        if device is not None:
            from mcfast.commands.common import resolve_device

            device = str(resolve_device(device))
        if precision == "auto":
            precision = fastest_precision(device or "cpu")
        path, shipped_recipe = resolve_model(model)
        engine = RunSampler(path, device=device, precision=precision, channels_last=channels_last)
        base = _as_recipe(recipe) if recipe is not None else (
            load_recipe(shipped_recipe) if shipped_recipe is not None else _default_recipe(engine))
        engine.diffusion_for(base)  # size and modality checked now, not at the first generate
        return cls(engine, base)

    @property
    def modality(self) -> str:
        return self.recipe.modality

    @property
    def image_size(self) -> int:
        return self.recipe.image_size

    @property
    def model_path(self) -> Path:
        return self.engine.ckpt

    def __repr__(self) -> str:
        return (f"Synthesizer(model={str(self.model_path)!r}, modality={self.modality!r}, "
                f"image_size={self.image_size}, precision={self.engine.precision!r})")

    def recipe_for(self, recipe: Recipe | str | Path | None = None, **settings: Any) -> Recipe:
        """The validated recipe a :meth:`generate` call with these settings uses (``build_recipe``)."""
        return build_recipe(self.recipe if recipe is None else recipe, **settings)

    def generate(self, n: int = 1, *, indices: Sequence[int] | None = None, anatomy: Any = None,
                 recipe: Recipe | str | Path | None = None, batch_size: int | None = None, progress: bool = False,
                 **settings: Any) -> list[SyntheticImage]:
        """Make ``n`` images (items 0..n-1, or the given ``indices``) and return them in memory.

        ``anatomy``: anything :func:`build_recipe` takes, or a 2-D array (HU for CT, [0, 1] for a
        mammogram; resized, and a mammogram framed, like a file would be) that guides every item.
        Other settings (``lesions``, ``seed``, ``steps``, ``sampler``, ``eta``, ``start_step``,
        ``image_size``, ``fast``, ...): :func:`build_recipe`. Item i is the same whatever ``batch_size``,
        and the same as item i of ``mcfast synthesize`` with the same recipe, model and precision."""
        from tqdm import tqdm

        from mcfast.synthesis.plan import plan_item
        from mcfast.synthesis.sources import anatomy_from_array

        array = None
        if anatomy is not None and not isinstance(anatomy, (str, Path, dict, AnatomySpec)):
            array = _as_array(anatomy)
        else:
            settings["anatomy"] = anatomy
        # An array anatomy replaces the recipe's source, so the recipe's own files need not be there.
        recipe = self.recipe_for(recipe, check_sources=array is None, **settings)
        indices = _indices(n, indices)
        plan = None
        if array is not None:
            fixed = anatomy_from_array(recipe.modality, array, recipe.image_size, source=ARRAY_SOURCE)
            plan = lambda i: plan_item(recipe, i, anatomy=fixed)  # noqa: E731
        diffusion = self.engine.diffusion_for(recipe)
        items: list[SyntheticImage] = []
        bar = tqdm(total=len(indices), desc=f"generate {recipe.modality}", unit="img", disable=not progress)
        for batch in self.engine.batches(recipe, indices, batch_size=batch_size, diffusion=diffusion, plan=plan):
            for it in batch:
                sampling = {"batch": it.batch, **it.sampling}
                items.append(SyntheticImage(it.plan.index, it.plan.seed, recipe.modality,
                                            np.clip(it.image, -1.0, 1.0), it.plan, sampling, recipe.output))
            bar.update(len(batch))
        bar.close()
        return items

    def synthesize(self, n: int, out: str | Path, *, recipe: Recipe | str | Path | None = None,
                   batch_size: int | None = None, progress: bool = True, **settings: Any):
        """``mcfast synthesize``: ``n`` items written into ``out`` (resumable, split over torchrun ranks,
        provenance.json, one coco.json). Returns a :class:`mcfast.synthesis.pipeline.SynthesisResult`."""
        from mcfast.io.paths import check_out_dir
        from mcfast.synthesis.pipeline import synthesize

        recipe = self.recipe_for(recipe, **settings)
        check_out_dir(Path(out), "out")
        return synthesize(self.engine, recipe, n, out, batch_size=batch_size, progress=progress)


def _as_array(anatomy: Any) -> np.ndarray:
    if hasattr(anatomy, "detach"):  # a torch tensor
        anatomy = anatomy.detach().cpu().numpy()
    try:
        array = np.asarray(anatomy)
    except (TypeError, ValueError):
        array = None
    if array is None or array.dtype == object or array.ndim == 0:
        raise InputError(f"anatomy must be 'phantom', a path, a dict of [anatomy] settings or a 2-D array, "
                         f"got {type(anatomy).__name__}")
    # (1, H, W) as a tensor of one channel; the shape, dtype and values are checked by anatomy_from_array
    return array[0] if array.ndim == 3 and array.shape[0] == 1 else array


def _indices(n: int, indices: Sequence[int] | None) -> list[int]:
    if indices is not None:
        out = list(indices)
        if not out or any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0 for i in out):
            raise InputError(f"indices must be item numbers >= 0, got {indices!r}")
        return [int(i) for i in out]
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n must be an integer >= 1, got {n!r}")
    return list(range(int(n)))


__all__ = ["FORMATS", "Synthesizer", "SyntheticImage", "build_recipe", "resolve_model", "save", "to_coco"]
