"""Scanner padding (outside the reconstructed field of view) kept exactly from the anatomy reference."""
import numpy as np
import pytest
from scipy import ndimage

from mcfast.anatomy.masks import padding_mask
from mcfast.errors import InputError
from mcfast.io.windows import hu_to_model, model_to_hu
from mcfast.synthesis.plan import padding_condition, plan_item
from mcfast.synthesis.recipe import recipe_from_dict
from mcfast.synthesis.sources import anatomy_from_array
from synthesis_helpers import make_tiny_run

SIZE = 64


def _scan(size: int = SIZE, seed: int = 0, circle: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(slice in HU, truth of its padding): air at -1000 HU with noise, so some air pixels clip to the floor,
    a body disc with a lung-like pocket exactly at the floor inside it, and -3024 HU outside the FOV circle."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - (size - 1) / 2, xx - (size - 1) / 2)
    hu = -1000.0 + 15.0 * rng.standard_normal((size, size))
    hu[r < 0.35 * size] = 40.0
    hu[np.hypot(yy - size / 2, xx - size / 2 + 6) < 0.1 * size] = -1030.0  # inside the body: not padding
    outside = r > size / 2 - 0.5
    if circle:
        hu[outside] = -3024.0
    hu = np.clip(hu, -1024.0, 3071.0).astype(np.float32)
    return hu, outside if circle else np.zeros_like(outside)


def test_padding_mask_is_the_outside_of_the_circle_only():
    hu, truth = _scan(128)
    x = np.asarray(hu_to_model(hu))
    far = ndimage.distance_transform_edt(~truth) > 3  # air and the pocket away from the padding
    assert ((x <= -1.0) & far).sum() > 50  # the test needs floor pixels besides the padding
    mask = padding_mask(x)
    assert mask.dtype == bool and not (mask & far).any() and (x[mask] <= -1.0).all()
    # all of the padding but the slivers thinner than the opening's disk where the circle meets the edges
    assert (mask & truth).sum() >= 0.95 * truth.sum()
    assert not padding_mask(np.asarray(hu_to_model(_scan(circle=False)[0]))).any()


def test_padding_mask_bad_input():
    with pytest.raises(InputError, match="NaN"):
        padding_mask(np.full((8, 8), np.nan))
    with pytest.raises(InputError, match="radius"):
        padding_mask(np.zeros((8, 8)), radius=-1)
    with pytest.raises(InputError, match="2-D"):
        padding_mask(np.zeros((2, 8, 8)))


def _recipe(keep: bool):
    return recipe_from_dict({"recipe": {"modality": "ct", "image_size": SIZE, "seed": 0},
                          "sampler": {"steps": "6", "batch_size": 1},
                          "anatomy": {"source": "phantom", "factor": 4, "stop_step": 200, "keep_padding": keep},
                          "pathology": [{"source": "synthetic", "category": "nodule", "size": [8, 10]}]},
                         source="t.toml")


def test_plan_adds_the_padding_condition_last():
    hu, truth = _scan()
    anatomy = anatomy_from_array("ct", hu, SIZE)
    without = plan_item(_recipe(False), 0, anatomy)
    with_padding = plan_item(_recipe(True), 0, anatomy)
    # the other conditions are unchanged and keep their places (their guidance noise streams with them)
    assert len(with_padding.conditions) == len(without.conditions) + 1
    for a, b in zip(without.conditions, with_padding.conditions):
        assert a.name == b.name and np.array_equal(a.ref, b.ref) and a.factor == b.factor
    pad = with_padding.conditions[-1]
    assert (pad.name, pad.factor, pad.stop_step) == ("padding", 1, 0)
    assert np.array_equal(pad.weight.numpy() > 0, padding_mask(hu_to_model(hu)))
    assert set(np.unique(pad.weight.numpy())) == {0.0, 1.0} and (pad.weight.numpy() > 0).sum() >= 0.9 * truth.sum()
    # a reference without padding (a phantom's air is not at the floor) adds nothing
    assert padding_condition(np.asarray(hu_to_model(_scan(circle=False)[0]))) is None


def test_keep_padding_must_be_a_boolean():
    with pytest.raises(InputError, match="anatomy.keep_padding must be true or false"):
        recipe_from_dict({"anatomy": {"keep_padding": 1}}, source="r.toml")


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_sampled_padding_is_the_reference_exactly(tmp_path, backend):
    from mcfast import ops
    from mcfast.api import Synthesizer

    if backend == "fused" and not ops.available():
        pytest.skip("mcfast's op library is not built")
    run = make_tiny_run(tmp_path / "run", SIZE, "ct", live_output=True)
    synth = Synthesizer.from_pretrained(run)
    hu, truth = _scan()
    items = {keep: synth.generate(n=1, anatomy=hu, recipe=_recipe(keep), backend=backend)[0]
             for keep in (False, True)}
    kept, pad = items[True].model_image, padding_mask(hu_to_model(hu))
    assert np.array_equal(kept[pad], np.full(pad.sum(), -1.0, np.float32))
    assert (model_to_hu(kept)[pad] == -1024.0).all()  # the floor of the written image
    assert (items[False].model_image[pad] > -1.0).mean() > 0.2  # without it the network leaves its texture
    assert items[True].meta["conditions"][-1] == {"name": "padding", "factor": 1, "stop_step": 0, "filter": "box",
                                                  "weighted": True}


def test_phantom_scan_circle_pads_outside_and_keeps_the_inside():
    from mcfast.anatomy.phantom import lung_phantom_labels

    plain, plain_labels = lung_phantom_labels(96, seed=3)
    hu, labels = lung_phantom_labels(96, seed=3, scan_circle=True)
    rr, cc = np.mgrid[:96, :96]
    outside = np.hypot(rr - 47.5, cc - 47.5) > 48
    assert (hu[outside] == -1024.0).all() and np.array_equal(hu[~outside], plain[~outside])
    assert all(not mask[outside].any() for mask in labels.values())
    assert np.array_equal(labels["lung"], plain_labels["lung"])  # the lungs lie inside the circle
    # padding_mask finds the circle (but the slivers where it meets the edges), and inside it at most
    # floor pixels of the air joined to it
    found = padding_mask(hu_to_model(hu))
    assert (hu[found] == -1024.0).all() and (found & outside).sum() >= 0.9 * outside.sum()
    assert not (found & ~outside & (ndimage.distance_transform_edt(~outside) > 8)).any()


def test_scan_circle_needs_a_ct_phantom():
    with pytest.raises(InputError, match="scan_circle .* needs anatomy.source = 'phantom'"):
        recipe_from_dict({"anatomy": {"source": "file", "path": "x.npy", "scan_circle": True}}, source="r.toml")
    with pytest.raises(InputError, match="scan_circle"):
        recipe_from_dict({"recipe": {"modality": "mg"}, "anatomy": {"scan_circle": True}}, source="r.toml")
    r = recipe_from_dict({"recipe": {"image_size": SIZE}, "anatomy": {"scan_circle": True, "keep_padding": True},
                          "pathology": [{"size": [8, 10]}]}, source="r.toml")
    plan = plan_item(r, 0)
    assert plan.conditions[-1].name == "padding" and (plan.anatomy.values.min() == -1024.0)


def test_mammogram_background_is_kept_exactly(tmp_path):
    """A framed mammogram is exactly blank outside the breast; with keep_padding the sample is too."""
    from mcfast.api import Synthesizer
    from mcfast.synthesis.plan import to_model
    from mcfast.synthesis.sources import load_anatomy

    anatomy = load_anatomy("mg", "phantom", "", SIZE, 5, np.random.default_rng(0))
    blank = padding_mask(to_model("mg", anatomy.values))
    assert blank.mean() > 0.2 and not (blank & anatomy.tissue).any()
    run = make_tiny_run(tmp_path / "run", SIZE, "mg", live_output=True)
    synth = Synthesizer.from_pretrained(run)
    recipe = recipe_from_dict({"recipe": {"modality": "mg", "image_size": SIZE, "seed": 0},
                               "sampler": {"steps": "6", "batch_size": 1},
                               "anatomy": {"source": "phantom", "factor": 4, "stop_step": 200, "keep_padding": True},
                               "pathology": []}, source="t.toml")
    item = synth.generate(n=1, recipe=recipe, anatomy=anatomy.values)[0]
    assert np.array_equal(item.model_image[blank], np.full(blank.sum(), -1.0, np.float32))


def test_padding_band_holds_the_reference_edge_too(tmp_path):
    """With padding_band = k the sample is the reference on the padding and on the k pixels beside it
    (a film's skin line), and the model's own beyond them."""
    from mcfast.api import Synthesizer
    from mcfast.synthesis.plan import to_model
    from mcfast.synthesis.sources import load_anatomy

    anatomy = load_anatomy("mg", "phantom", "", SIZE, 5, np.random.default_rng(0))
    reference = to_model("mg", anatomy.values)
    blank = padding_mask(reference)
    condition = padding_condition(reference, band=3)
    held = condition.weight.numpy() > 0
    distance = ndimage.distance_transform_edt(~blank)
    assert np.array_equal(held, distance <= 3) and (held & ~blank).sum() > 0
    assert np.array_equal(padding_condition(reference, band=0).weight.numpy() > 0, blank)

    run = make_tiny_run(tmp_path / "run", SIZE, "mg", live_output=True)
    synth = Synthesizer.from_pretrained(run)

    def recipe(band):
        return recipe_from_dict({"recipe": {"modality": "mg", "image_size": SIZE, "seed": 0},
                                 "sampler": {"steps": "6", "batch_size": 1},
                                 "anatomy": {"source": "phantom", "factor": 4, "stop_step": 200, "keep_padding": True,
                                             "padding_band": band}, "pathology": []}, source="t.toml")
    item = synth.generate(n=1, recipe=recipe(3), anatomy=anatomy.values)[0].model_image
    plain = synth.generate(n=1, recipe=recipe(0), anatomy=anatomy.values)[0].model_image
    band = held & ~blank
    assert np.allclose(item[band], reference[band], atol=1e-5)
    assert not np.allclose(plain[band], reference[band], atol=1e-2)  # without the band the model draws its own edge
    inside = distance > 6
    assert not np.allclose(item[inside], reference[inside], atol=1e-2)


def test_padding_band_needs_keep_padding_and_a_sane_width():
    with pytest.raises(InputError, match="padding_band = 2 .* needs anatomy.keep_padding = true"):
        recipe_from_dict({"anatomy": {"padding_band": 2}}, source="r.toml")
    with pytest.raises(InputError, match=r"padding_band = 9 must lie in \[0, image_size/8 = 8\]"):
        recipe_from_dict({"recipe": {"image_size": SIZE}, "anatomy": {"keep_padding": True, "padding_band": 9}},
                         source="r.toml")
    with pytest.raises(InputError, match="padding_band must be an integer"):
        recipe_from_dict({"anatomy": {"keep_padding": True, "padding_band": 2.5}}, source="r.toml")


def test_a_lesion_patch_over_the_padding_yields_to_it(tmp_path):
    """Where a lesion's Gaussian weight reaches the held padding, the lesion's weight is 0 there, so the
    padding ends exactly at the reference (summed, the two corrections left it up to 0.11 off)."""
    from mcfast.api import Synthesizer
    from mcfast.guidance.conditions import Condition
    from mcfast.synthesis.plan import to_model, yield_to_held
    from mcfast.synthesis.sources import load_anatomy

    anatomy = load_anatomy("mg", "phantom", "", SIZE, 5, np.random.default_rng(0))
    reference = to_model("mg", anatomy.values)
    held = padding_mask(reference)
    ys, xs = np.nonzero(held & (ndimage.distance_transform_edt(held) <= 2))  # a padding pixel beside the breast
    box = (int(np.clip(xs[0] - 8, 0, SIZE - 16)), int(np.clip(ys[0] - 8, 0, SIZE - 16)), 16, 16)
    lesion = Condition.on_canvas(reference, box, 1, 0, name="mass0")
    assert (lesion.weight.numpy().reshape(SIZE, SIZE)[held] > 0).any()
    yielded = yield_to_held(lesion, held).weight.numpy().reshape(SIZE, SIZE)
    before = lesion.weight.numpy().reshape(SIZE, SIZE)
    assert (yielded[held] == 0).all() and np.array_equal(yielded[~held], before[~held])
    early = Condition.on_canvas(reference, box, 1, 100, name="early")  # stops before the last step: kept
    assert yield_to_held(early, held) is early
    assert yield_to_held(lesion, np.zeros_like(held)) is lesion

    run = make_tiny_run(tmp_path / "run", SIZE, "mg", live_output=True)
    synth = Synthesizer.from_pretrained(run)
    recipe = recipe_from_dict({"recipe": {"modality": "mg", "image_size": SIZE, "seed": 0},
                               "sampler": {"steps": "6", "batch_size": 1},
                               "anatomy": {"source": "phantom", "factor": 4, "stop_step": 200, "keep_padding": True},
                               "pathology": [{"source": "synthetic", "category": "mass", "size": [28, 32],
                                              "count": [1, 1]}]}, source="t.toml")
    plan = plan_item(recipe, 0, anatomy)
    mass = plan.conditions[1].weight.numpy().reshape(SIZE, SIZE)
    gaussian = plan.conditions[1].patch.weight_map((SIZE, SIZE)).numpy().reshape(SIZE, SIZE)
    assert (gaussian[held] > 0.05).any()  # the planned mass patch does reach the padding
    assert plan.conditions[1].name.startswith("mass") and (mass[held] == 0).all() and mass.max() > 0.5
    item = synth.generate(n=1, recipe=recipe, anatomy=anatomy.values)[0]
    assert np.array_equal(item.model_image[held], np.full(held.sum(), -1.0, np.float32))
