"""The CT anatomy reference guiding the air around the body at a finer factor (anatomy.outside_factor)."""
import numpy as np
import pytest

from mcfast.anatomy.masks import body_mask, padding_mask
from mcfast.errors import InputError
from mcfast.io.windows import hu_to_model
from mcfast.synthesis.plan import outside_body_weight, plan_item
from mcfast.synthesis.recipe import recipe_from_dict
from mcfast.synthesis.sources import anatomy_from_array

SIZE = 128


def _slice() -> np.ndarray:
    """HU: a body disc (lungs inside it) in noisy air, scanner padding outside the reconstruction circle."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(yy - (SIZE - 1) / 2, xx - (SIZE - 1) / 2)
    hu = -1000.0 + 15.0 * rng.standard_normal((SIZE, SIZE))
    hu[r < 0.3 * SIZE] = 40.0
    hu[np.hypot(yy - SIZE / 2, xx - SIZE / 2 + 12) < 0.08 * SIZE] = -850.0  # a lung: inside the body
    hu[r > SIZE / 2 - 0.5] = -3024.0
    return np.clip(hu, -1024.0, 3071.0).astype(np.float32)


def _recipe(**anatomy):
    return recipe_from_dict({"recipe": {"modality": "ct", "image_size": SIZE, "seed": 0},
                             "sampler": {"steps": "6", "batch_size": 1},
                             "anatomy": {"source": "phantom", "factor": 8, "stop_step": 100, "keep_padding": True,
                                         **anatomy},
                             "pathology": [{"source": "synthetic", "category": "nodule", "size": [8, 10]}]},
                            source="t.toml")


def test_the_weight_is_the_air_around_the_body_only():
    hu = _slice()
    weight = outside_body_weight(hu, np.asarray(hu_to_model(hu)))
    body, padding = body_mask(hu), padding_mask(np.asarray(hu_to_model(hu)))
    assert weight.dtype == np.float32 and 0 <= weight.min() and weight.max() <= 1
    assert (weight[body] == 0).all() and (weight[padding] == 0).all()  # the lung is inside the body
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(yy - (SIZE - 1) / 2, xx - (SIZE - 1) / 2)
    assert (weight[(r > 0.3 * SIZE + 10) & (r < SIZE / 2 - 10)] > 0.99).all()  # air far from both edges
    no_air = np.full((SIZE, SIZE), 40.0, np.float32)
    assert outside_body_weight(no_air, np.asarray(hu_to_model(no_air))) is None


def test_plan_splits_the_anatomy_between_the_two_factors():
    hu = _slice()
    anatomy = anatomy_from_array("ct", hu, SIZE)
    plain = plan_item(_recipe(), 0, anatomy)
    split = plan_item(_recipe(outside_factor=2, outside_stop_step=20), 0, anatomy)
    names = [c.name for c in split.conditions]
    assert names == [c.name for c in plain.conditions[:-1]] + ["outside_body", "padding"]
    # the lesions keep their places (and so their guidance noise streams) and are unchanged
    for a, b in zip(plain.conditions[1:-1], split.conditions[1:-2]):
        assert a.name == b.name and np.array_equal(a.ref, b.ref) and np.array_equal(a.weight, b.weight)
    anatomy_c, outside_c = split.conditions[0], split.conditions[-2]
    assert (anatomy_c.factor, anatomy_c.stop_step) == (8, 100) and (outside_c.factor, outside_c.stop_step) == (2, 20)
    # the two weights add up to 1 everywhere: no pixel is corrected twice or left out
    assert np.allclose(anatomy_c.weight.numpy() + outside_c.weight.numpy(), 1.0)
    assert plain.conditions[0].weight is None


@pytest.mark.parametrize("anatomy,modality,match", [
    ({"outside_factor": 3}, "ct", "outside.factor = 3 does not divide"),
    ({"outside_factor": 2, "outside_stop_step": 1001}, "ct", "outside.stop_step = 1001"),
    ({"outside_stop_step": 20}, "ct", "needs anatomy.outside_factor"),
    ({"outside_factor": 2}, "mg", "needs recipe.modality = 'ct'"),
])
def test_bad_outside_settings_name_the_key(anatomy, modality, match):
    with pytest.raises(InputError, match=match):
        recipe_from_dict({"recipe": {"modality": modality, "image_size": SIZE},
                          "anatomy": {"source": "phantom", **anatomy}}, source="t.toml")


def test_air_outside_body_sees_threads_in_the_air_not_the_body():
    from mcfast.evaluate.tissue import air_outside_body
    flat = _slice()
    threads = flat.copy()
    threads[10:118, 20] = -850.0  # a thread in the air, outside the body disc (radius 38 px)
    threads[10:118, 107] = -850.0
    x = np.stack([np.asarray(hu_to_model(flat)), np.asarray(hu_to_model(threads))])
    flat_air, thread_air = air_outside_body(x[:1]), air_outside_body(x[1:])
    assert flat_air["n_images"] == 1 and flat_air["share_above"] == 0.0 and abs(flat_air["median_hu"] + 1000) < 5
    assert thread_air["share_above"] > 0.01
    body_only = np.full((1, SIZE, SIZE), np.asarray(hu_to_model(np.full((1, 1), 40.0, np.float32)))[0, 0])
    assert air_outside_body(body_only)["n_images"] == 0
