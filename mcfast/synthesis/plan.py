"""One item's plan: its anatomy reference, its placed pathologies and the guidance conditions.

Model space is [-1, 1]: CT through ``hu_to_model``, mammograms through ``2·x − 1``. Each pathology
reference is the anatomy with the (matched, augmented) patch pasted into its square, weighted by a
Gaussian in that square (paper's weighted ILVR), so the condition acts only around the lesion.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from mcfast.anatomy.masks import body_mask, padding_mask
from mcfast.errors import InputError
from mcfast.guidance.conditions import Condition
from mcfast.seeding import item_seed
from mcfast.synthesis.recipe import MATCH_REGIONS, Recipe
from mcfast.synthesis.sources import Anatomy, load_anatomy, load_patch


def to_model(modality: str, values: np.ndarray) -> np.ndarray:
    """HU (CT) or [0, 1] (MG) → model space [-1, 1]."""
    if modality == "ct":
        from mcfast.io.windows import hu_to_model

        return np.asarray(hu_to_model(values), dtype=np.float32)
    return (2.0 * np.clip(values, 0.0, 1.0) - 1.0).astype(np.float32)


def from_model(modality: str, x: np.ndarray) -> np.ndarray:
    """Model space → HU (CT) or [0, 1] (MG)."""
    if modality == "ct":
        from mcfast.io.windows import model_to_hu

        return np.asarray(model_to_hu(x), dtype=np.float32)
    return ((np.clip(x, -1.0, 1.0) + 1.0) / 2.0).astype(np.float32)


@dataclass
class PlacedLesion:
    """A pathology inserted into one item: exact mask, COCO box, centre, category and provenance."""

    mask: np.ndarray
    box: tuple[int, int, int, int]
    patch_box: tuple[int, int, int, int]
    center: tuple[float, float]
    category: str
    source: str
    meta: dict = field(default_factory=dict)


@dataclass
class ItemPlan:
    index: int
    seed: int
    anatomy: Anatomy
    lesions: list[PlacedLesion]
    conditions: list[Condition]
    pathology_reference: np.ndarray  # anatomy with every patch pasted (model space), for the contact sheet


def plan_item(recipe: Recipe, index: int, anatomy: Anatomy | None = None) -> ItemPlan:
    """Draw the anatomy and pathologies of item ``index`` and build its conditions (deterministic per seed).

    ``anatomy``: a reference at the recipe's size to use instead of the recipe's source (the Python API's
    in-memory arrays); the recipe's anatomy factor, stop step and filter still apply."""
    seed = item_seed(recipe.seed, index)
    rng = np.random.default_rng(seed)
    size, modality = recipe.image_size, recipe.modality
    a = recipe.anatomy
    if anatomy is None:
        anatomy = load_anatomy(modality, a.source, a.path, size, seed, rng, a.slice_index, a.scan_circle,
                               a.per_patient, {"wall": a.phantom_wall, "blood_hu": a.phantom_blood_hu})
    anatomy_model = to_model(modality, anatomy.values)
    outside = outside_body_weight(anatomy.values, anatomy_model) if a.outside_factor else None
    conditions = [Condition(anatomy_model, a.factor, a.stop_step, None if outside is None else 1.0 - outside, a.filter,
                            name="anatomy")]
    free = anatomy.tissue.copy()  # tissue not yet used by a lesion: lesions do not overlap
    lesions: list[PlacedLesion] = []
    composite = anatomy_model.copy()
    for k, spec in enumerate(recipe.pathology):
        count = int(rng.integers(spec.count[0], spec.count[1] + 1))
        for j in range(count):
            side = int(rng.integers(spec.size[0], spec.size[1] + 1))
            lesion, patch_model, alpha = _place_one(recipe, spec, anatomy, free, rng, side, f"pathology[{k}] #{j}")
            x, y, w, h = lesion.patch_box
            canvas = anatomy_model.copy()
            canvas[y:y + h, x:x + w] = (1 - alpha) * canvas[y:y + h, x:x + w] + alpha * patch_model
            composite[y:y + h, x:x + w] = (1 - alpha) * composite[y:y + h, x:x + w] + alpha * patch_model
            conditions.append(Condition.on_canvas(canvas, lesion.patch_box, spec.factor, spec.stop_step,
                                                  spec.sigma_scale, None, spec.filter, name=f"{spec.category}{j}"))
            lesions.append(lesion)
            free &= ~ndimage.binary_dilation(lesion.mask.astype(bool), iterations=2)
    if lesions and a.stop_step == 0:
        conditions[0] = carry_lesions(conditions[0], composite)
    if outside is not None:  # after the lesions, so their guidance noise streams stay as they were without it
        conditions.append(Condition(anatomy_model, a.outside_factor, a.outside_stop_step, outside, a.filter,
                                    name="outside_body"))
    if a.keep_padding:
        padding = padding_condition(anatomy_model, a.padding_band)
        if padding is not None:
            held = padding.weight.numpy().reshape(anatomy_model.shape) > 0
            conditions = [yield_to_held(c, held) for c in conditions]
            conditions.append(padding)  # last, so the other conditions' guidance noise streams stay as they were
    return ItemPlan(index, seed, anatomy, lesions, conditions, composite)


def carry_lesions(anatomy: Condition, composite: np.ndarray) -> Condition:
    """The anatomy condition with ``composite`` (the anatomy with every lesion patch pasted) as its reference.

    Why: the corrections of one step are summed from the same x. An anatomy condition that still acts at
    the last step (stop step 0) would pull the low-pass of every lesion back to the lesion-free anatomy to
    the end while the lesion's condition pulls it to the lesion, so the two would meet halfway and the
    nodule would lose contrast (with the box filter it also came out blocky, the anatomy's N x N means
    showing through). Guided to the composite, the two agree; a condition that stops earlier (t >= 100 in
    the recipes that had one) leaves the last steps to the lesion alone and keeps the lesion-free anatomy,
    so those recipes' images are unchanged.
    """
    return replace(anatomy, ref=composite)


def yield_to_held(condition: Condition, held: np.ndarray) -> Condition:
    """``condition`` with weight 0 on the ``held`` pixels when it still acts at the last step (stop step 0).

    Why: the corrections of one step are summed from the same x, so where a lesion's Gaussian weight w
    overlaps the held padding the step sets x to y_padding + w·(y_lesion − x): the held pixels end off the
    reference (up to 0.11 on 3 of 8 planned 512² film items, whose mass patch reached the background),
    and the two references' independent noise adds up at every step (with a held skin band of 6 px the
    breast's high-pass RMS in those items went from 40 to 171 × 10⁻³; docs/results/edge_mg.md). A
    condition that stops earlier (the anatomy, at t ≥ 100 in every recipe) leaves the last steps to the
    held reference alone and is kept as it is.
    """
    if condition.stop_step > 0 or not held.any():
        return condition
    weight = (np.ones(held.shape, np.float32) if condition.weight is None
              else condition.weight.numpy().reshape(held.shape).copy())
    if not (weight[held] > 0).any():
        return condition
    weight[held] = 0.0
    return replace(condition, weight=weight)


#: Pixels of the body's edge kept in the anatomy condition (the skin is body), and the feather (Gaussian σ,
#: pixels) of the step between the two conditions' weights, so the switch of factor leaves no seam.
OUTSIDE_MARGIN_PX = 4
OUTSIDE_FEATHER_PX = 2.0


def outside_body_weight(anatomy_values: np.ndarray, anatomy_model: np.ndarray) -> np.ndarray | None:
    """(H, W) float32 weight in [0, 1] of the CT reference's air around the body (outside
    :func:`mcfast.anatomy.masks.body_mask`, grown by ``OUTSIDE_MARGIN_PX``, feathered), 0 on its
    scanner padding; None when there is no such air.

    Why: guided at the anatomy's coarse factor (8 at 512²), the air around the body is held only in its
    mean; below that scale the network draws threads and blotches there (about -950 HU) where a scan has
    flat air with fine noise: the model was trained on 64² crops, and a crop of air near a blanket or a
    table looks like one far from any. The anatomy condition keeps 1 − this weight, so the two corrections
    never act twice on one pixel; the padding, held to the last step by its own condition, is left to it.
    """
    body = body_mask(np.asarray(anatomy_values, np.float32))
    padding = padding_mask(anatomy_model)
    outside = ~ndimage.binary_dilation(body, iterations=OUTSIDE_MARGIN_PX) & ~padding
    if not outside.any():
        return None
    weight = ndimage.gaussian_filter(outside.astype(np.float32), OUTSIDE_FEATHER_PX)
    weight[body | padding] = 0.0
    return np.clip(weight, 0.0, 1.0)


def padding_condition(anatomy_model: np.ndarray, band: int = 0) -> Condition | None:
    """The reference's scanner padding as a condition: factor 1, weight 1 on the padding (and on the
    pixels within ``band`` pixels of it, Euclidean), to the last step.

    Why: a real slice is exactly the floor outside the reconstruction circle, and the network cannot make a
    region exactly flat (its noise estimate at the lowest levels leaves grain, measured ε RMSE 0.69 at t = 0
    on training crops), so without this the sampled padding carries a faint texture just above the floor
    that no scan has. At factor 1 the correction puts the noised reference itself there at every step
    (the clean one at the last), so the padding ends exactly at the floor and the network sees it, like a
    known region in inpainting, while it samples the body next to it. None when the reference has none.

    ``band``: a film's skin line is a step from the blank background to the tissue, and the model draws
    it as a ramp about 5 pixels wide (docs/guidance.md, "Scanner padding"); holding a band of the
    reference's own edge pixels keeps the step.
    """
    mask = padding_mask(anatomy_model)
    if not mask.any():
        return None
    if band > 0:
        mask = ndimage.distance_transform_edt(~mask) <= band
    return Condition(anatomy_model, 1, 0, mask.astype(np.float32), name="padding")


def blend_alpha(lesion_mask: np.ndarray, sigma_frac: float = 0.5) -> np.ndarray:
    """Opacity of a patch over the anatomy: 1 on the (slightly blurred) lesion, a Gaussian fall-off
    toward the patch edge elsewhere, so the reference shows the lesion in its new surroundings."""
    from mcfast.pathology.transform import gaussian_falloff

    soft = ndimage.gaussian_filter(lesion_mask.astype(np.float32), 1.0)
    soft = np.clip(soft / max(float(soft.max()), 1e-6), 0.0, 1.0)
    return np.maximum(gaussian_falloff(lesion_mask.shape, sigma_frac), soft).astype(np.float32)


def matching_region(tissue: np.ndarray, patch_box: tuple[int, int, int, int], region: str) -> np.ndarray:
    """The pixels a placed MG patch's intensities are matched to: the whole ``tissue`` mask ("breast"),
    or the tissue under the placed patch square ``patch_box`` (x, y, w, h) ("local").

    Why the square itself and no wider window: the MIAS patch spans 2.5 lesion radii each way
    (sources.MIAS_PATCH_MARGIN), so the square already holds the lesion's surround. A window grown by one
    patch side on each side takes in fat at the skin line and dense tissue or pectoral muscle away from
    the lesion; the range [min, quantile q] then spans 0.6-0.9 of [0, 1] and the spot the lesion lands on
    often sits in its top decile, above the equalised mass. Measured on 200 planned 512² items (see
    MIAS_PATCH_MARGIN; margin 1.25): masses darker than their surround 42 % with the grown window, 21 %
    with the square; at margin 2 (100 items) 14 % against 5 %.
    """
    tissue = np.asarray(tissue, dtype=bool)
    if region == "breast":
        return tissue
    if region != "local":
        raise InputError(f"match_region {region!r} is not one of {', '.join(MATCH_REGIONS)}")
    x, y, w, h = patch_box
    window = np.zeros_like(tissue)
    window[y:y + h, x:x + w] = True
    return window & tissue


def _place_one(recipe: Recipe, spec, anatomy: Anatomy, free: np.ndarray, rng: np.random.Generator, side: int,
               what: str) -> tuple[PlacedLesion, np.ndarray, np.ndarray]:
    """Draw, place and match one lesion: (lesion, its square patch in model space, its blend opacity).

    The item's draws come in this order: the patch, its augmentation, (MG) the quantile q, the position.
    An MG patch is placed before it is matched, since placement depends only on its lesion mask and the
    tissue, and "local" matching needs to know where the lesion went; q is drawn before the position
    all the same, so "breast" matching gives exactly the items it gave when matching came first.
    """
    from mcfast.pathology.placement import place_patch
    from mcfast.pathology.transform import augment, draw_q, mammo_transform, prepare_patch

    modality = recipe.modality
    patch = load_patch(modality, spec.source, spec.path, rng, side)
    if modality == "mg":
        patch = augment(patch, rng)
        q = draw_q(rng)
    else:
        patch = prepare_patch(patch, rng)
    try:
        placed = place_patch(anatomy.values.shape, free, patch, rng, min_overlap=spec.min_overlap, fill=np.nan)
    except InputError as exc:
        raise InputError(f"{recipe.source}: {what}: {exc}") from None
    rows, cols = np.nonzero(np.isfinite(placed.canvas))
    y, x = int(rows.min()), int(cols.min())
    h, w = patch.shape
    if modality == "mg":
        # Equalise + rescale to [lo(region), quantile(region, q)] (lo: its minimum or quantile 1 - q,
        # spec.match_low); the Gaussian fall-off is applied as a blend toward the anatomy (blend_alpha)
        # rather than toward lo, so no dark square frames the lesion.
        region = matching_region(anatomy.tissue, (x, y, w, h), spec.match_region)
        patch = mammo_transform(patch, anatomy.values, rng, q=q, reference_mask=region, falloff=False,
                                low=spec.match_low)
        patch.meta["match_region"] = spec.match_region
    patch_model = to_model(modality, patch.image)
    meta = {k: v for k, v in patch.meta.items()
            if isinstance(v, (int, float, str, bool, list, tuple, np.generic)) or v is None}
    lesion = PlacedLesion(placed.mask.astype(np.uint8), tuple(int(v) for v in placed.box), (x, y, w, h),
                          tuple(float(v) for v in placed.center), spec.category, patch.source, meta)
    return lesion, patch_model, blend_alpha(patch.mask)
