"""MIAS masses matched into mammograms: mass classes only, training films only, provenance, exact masks
after augmentation, local intensity matching, and the lesion-to-surround contrast."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mcfast.errors import InputError
from mcfast.evaluate.lesion_contrast import contrast_summary, lesion_contrast, mass_contrasts, mias_mass_masks
from mcfast.io.annotations import MIAS_MASS_CLASSES, read_mias_info
from mcfast.pathology.transform import _rotate_about_centre, augment
from mcfast.synthesis.plan import _place_one, from_model, matching_region
from mcfast.synthesis.recipe import recipe_from_dict
from mcfast.synthesis.sources import Anatomy, load_patch

PREPARED_MIAS = Path(__file__).resolve().parents[1] / "data" / "mg_mias"

# ref, tissue, class, severity, x, y (from the bottom), radius: two masses, and lesions that are not masses
FAKE_INFO = [("mdb001", "G", "CIRC", "B", 30, 34, 6), ("mdb002", "G", "ASYM", "M", 32, 32, 8),
             ("mdb003", "F", "ARCH", "B", 20, 40, 5), ("mdb004", "D", "SPIC", "M", 40, 20, 5),
             ("mdb005", "F", "NORM"), ("mdb006", "G", "CALC", "B", 30, 30, 4)]


def _fake_mias(root: Path, lines=FAKE_INFO, size: int = 64) -> Path:
    """A MIAS folder (Info.txt + images/mdbNNN.png) with a bright disc at each annotated circle."""
    (root / "images").mkdir(parents=True)
    text = []
    rng = np.random.default_rng(0)
    for line in lines:
        text.append(" ".join(str(v) for v in line))
        img = 0.4 + 0.05 * rng.standard_normal((size, size))
        if len(line) == 7:
            x, y, r = line[4:]
            rr, cc = np.ogrid[:size, :size]
            img[(rr - (size - 1 - y)) ** 2 + (cc - x) ** 2 <= r * r] += 0.3
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / "images" / f"{line[0]}.png")
    (root / "Info.txt").write_text("\n".join(text) + "\n")
    return root


def _fake_prepared(root: Path, films: list[Path]) -> Path:
    root.mkdir(parents=True)
    items = [{"file": f"mg_{k:06d}.npy", "source": str(f), "patient": f"woman{k:03d}"} for k, f in enumerate(films)]
    (root / "manifest.json").write_text(json.dumps({"format": "mcfast-prepared", "modality": "mg", "items": items}))
    return root


def _drawn_refs(path: Path, n: int = 40) -> list[tuple[str, str]]:
    rng = np.random.default_rng(1)
    patches = [load_patch("mg", "mias", str(path), rng, 16) for _ in range(n)]
    return [(p.meta["mias_ref"], p.meta["mias_class"]) for p in patches]


def test_mias_source_draws_masses_only(tmp_path):
    drawn = _drawn_refs(_fake_mias(tmp_path / "mias"))
    assert {cls for _, cls in drawn} <= set(MIAS_MASS_CLASSES)
    assert {ref for ref, _ in drawn} == {"mdb001", "mdb004"}  # never the ASYM, ARCH or CALC films
    only_asym = _fake_mias(tmp_path / "asym", [FAKE_INFO[1], FAKE_INFO[2]])
    with pytest.raises(InputError, match="no mass"):
        load_patch("mg", "mias", str(only_asym), np.random.default_rng(0), 16)


def test_mias_source_from_a_prepared_folder_draws_only_its_films(tmp_path):
    mias = _fake_mias(tmp_path / "mias")
    images = mias / "images"
    train = _fake_prepared(tmp_path / "train", [images / "mdb002.png", images / "mdb004.png"])
    assert {ref for ref, _ in _drawn_refs(train)} == {"mdb004"}  # mdb001 belongs to another split
    patch = load_patch("mg", "mias", str(train), np.random.default_rng(0), 16)
    assert (patch.meta["mias_class"], patch.meta["mias_severity"], patch.label) == ("SPIC", "M", "SPIC")
    (tmp_path / "loose").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "loose" / "mdb009.png")
    orphan = _fake_prepared(tmp_path / "orphan", [tmp_path / "loose" / "mdb009.png"])
    with pytest.raises(InputError, match="no MIAS Info.txt"):
        load_patch("mg", "mias", str(orphan), np.random.default_rng(0), 16)


def _disc_patch(seed: int = 0):
    from mcfast.pathology.patches import Patch

    rr, cc = np.ogrid[:21, :27]
    mask = (rr - 7) ** 2 + (cc - 9) ** 2 <= 16  # off-centre, so any flip or rotation moves it
    img = 0.3 + 0.5 * mask + 0.01 * np.random.default_rng(seed).standard_normal(mask.shape)
    return Patch(img, mask, "test", "mg")


def test_flips_move_the_mask_pixel_exactly():
    patch = _disc_patch()
    for seed in range(8):
        out = augment(patch, np.random.default_rng(seed), rotate=False, max_shift=0.0)
        want = patch.mask.astype(bool)
        want = want[:, ::-1] if out.meta["flip_lr"] else want
        want = want[::-1] if out.meta["flip_ud"] else want
        assert np.array_equal(out.mask.astype(bool), want)
        assert np.array_equal(out.image > 0.55, want)  # the image moved with it


def test_rotation_mask_is_the_mask_rotated_alone():
    patch = _disc_patch()
    for seed in range(4):
        out = augment(patch, np.random.default_rng(seed), flip=False, max_shift=0.0)
        _, alone = _rotate_about_centre(np.zeros(patch.shape, np.float32), patch.mask.astype(bool), out.meta["angle"])
        assert np.array_equal(out.mask.astype(bool), alone)
        bright, m = out.image > 0.55, out.mask.astype(bool)
        assert (bright & m).sum() / (bright | m).sum() > 0.8  # the lesion's pixels turned with its mask


def _mg_recipe(source="synthetic", path="", region="local", size=10, min_overlap=1.0):
    return recipe_from_dict({"recipe": {"modality": "mg", "image_size": 64},
                             "pathology": [{"source": source, "path": path, "size": [size, size],
                                            "min_overlap": min_overlap, "match_region": region}]}, "test")


def _halves_anatomy(seed: int = 0) -> Anatomy:
    """Left half dark (0.2), right half bright (0.8), a little noise; all of it is tissue."""
    values = np.full((64, 64), 0.2, np.float32)
    values[:, 32:] = 0.8
    values += 0.01 * np.random.default_rng(seed).standard_normal(values.shape).astype(np.float32)
    return Anatomy(values, np.ones(values.shape, bool), "halves")


def test_placed_mask_is_the_augmented_source_mask(tmp_path):
    mias = str(_fake_mias(tmp_path / "mias"))
    recipe = _mg_recipe("mias", mias, size=20, min_overlap=0.5)
    anatomy = _halves_anatomy()
    for seed in range(4):
        lesion, patch_model, _ = _place_one(recipe, recipe.pathology[0], anatomy, anatomy.tissue,
                                            np.random.default_rng(seed), 20, "test")
        rng = np.random.default_rng(seed)  # the same draws: the patch, then its augmentation
        want = augment(load_patch("mg", "mias", mias, rng, 20), rng).mask.astype(bool)
        x, y, w, h = lesion.patch_box
        assert want.shape == (h, w) == patch_model.shape
        assert np.array_equal(lesion.mask[y:y + h, x:x + w].astype(bool), want)
        assert lesion.mask.sum() == want.sum()  # nothing outside the square
        assert lesion.meta["mias_ref"] in ("mdb001", "mdb004") and lesion.meta["match_region"] == "local"


@pytest.mark.parametrize("region", ["local", "breast"])
def test_local_matching_takes_its_range_from_around_the_lesion(region):
    recipe = _mg_recipe(region=region)
    anatomy = _halves_anatomy()
    free = np.zeros_like(anatomy.tissue)
    free[:, 48:] = True  # the lesion lands in the bright half, its square at least 16 px from the dark one
    right = anatomy.values[:, 32:]
    for seed in range(5):
        lesion, patch_model, _ = _place_one(recipe, recipe.pathology[0], anatomy, free,
                                            np.random.default_rng(seed), 10, "test")
        assert lesion.patch_box[0] >= 32
        values = from_model("mg", patch_model)
        if region == "local":
            assert values.min() >= right.min() - 1e-5 and values.max() <= right.max() + 1e-5
        else:  # the whole breast's range reaches down into the dark half
            assert values.min() < 0.3


def test_matching_region_is_the_tissue_under_the_patch():
    tissue = np.zeros((20, 20), bool)
    tissue[:, 5:] = True
    local = matching_region(tissue, (3, 4, 6, 5), "local")
    want = np.zeros_like(tissue)
    want[4:9, 5:9] = True  # rows 4-8 of the square, its columns 3-8 cut to the tissue from column 5
    assert np.array_equal(local, want)
    assert np.array_equal(matching_region(tissue, (3, 4, 6, 5), "breast"), tissue)
    with pytest.raises(InputError, match="match_region"):
        matching_region(tissue, (3, 4, 6, 5), "ring")


@pytest.mark.parametrize("data, message", [
    ({"recipe": {"modality": "mg"}, "pathology": [{"match_region": "window"}]}, "pathology[0].match_region"),
    ({"recipe": {"modality": "ct"}, "pathology": [{"match_region": "local"}]}, "applies to modality 'mg' only"),
    ({"recipe": {"modality": "mg"}, "pathology": [{"match_low": "q05"}]}, "pathology[0].match_low"),
    ({"recipe": {"modality": "ct"}, "pathology": [{"match_low": "mirror"}]}, "match_low = 'mirror' applies to"),
])
def test_recipe_checks_match_region(data, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        recipe_from_dict(data, "r.toml")
    default = recipe_from_dict({"recipe": {"modality": "mg"}, "pathology": [{}]}).pathology[0]
    assert (default.match_region, default.match_low) == ("breast", "min")


def test_mirror_matching_takes_the_low_end_from_the_quantile_of_the_region():
    """A placed mass records its low end; with "mirror" it is the region's quantile 1 - q, above the few dark
    pixels that set the minimum."""
    anatomy = _halves_anatomy()
    anatomy.values[4::16, 36::16] = 0.0  # a few dark pixels in the bright half (at most 2 under a 20 px square)
    free = np.zeros_like(anatomy.tissue)
    free[:, 40:] = True
    for low in ("min", "mirror"):
        recipe = recipe_from_dict({"recipe": {"modality": "mg", "image_size": 64},
                                   "pathology": [{"size": [20, 20], "min_overlap": 1.0, "match_region": "local",
                                                  "match_low": low}]}, "test")
        lesion, _, _ = _place_one(recipe, recipe.pathology[0], anatomy, free, np.random.default_rng(1), 20, "t")
        x, y, w, h = lesion.patch_box
        region = anatomy.values[y:y + h, x:x + w]
        assert lesion.meta["match_low"] == low
        assert region.min() == 0.0  # the square holds a dark pixel
        want = region.min() if low == "min" else np.quantile(region, 1 - lesion.meta["q"])
        assert lesion.meta["lo"] == pytest.approx(float(want), abs=1e-6)
        assert (lesion.meta["lo"] > 0.5) == (low == "mirror")


def test_coco_attributes_carry_the_source_lesion(tmp_path):
    from mcfast.io.coco import read_coco
    from mcfast.synthesis.outputs import write_coco

    d = tmp_path / "000000"
    d.mkdir()
    labels = np.zeros((8, 8), np.uint8)
    labels[2:5, 2:5] = 1
    np.save(d / "labels.npy", labels)
    meta = {"height": 8, "width": 8, "lesions": [{"label": 1, "category": "mass", "bbox": [2, 2, 3, 3],
            "source": "mias:mdb004", "meta": {"mias_ref": "mdb004", "mias_class": "SPIC", "mias_severity": "M"}}]}
    (d / "meta.json").write_text(json.dumps(meta))
    ann = read_coco(write_coco(tmp_path, 1, "mg"))["annotations"][0]
    assert ann["attributes"] == {"source": "mias:mdb004", "class": "SPIC", "severity": "M", "ref": "mdb004"}


def test_lesion_contrast_of_a_disc():
    rr, cc = np.ogrid[:40, :40]
    mask = (rr - 20) ** 2 + (cc - 20) ** 2 <= 25
    image = np.where(mask, 0.5, 0.3)
    assert lesion_contrast(image, mask) == pytest.approx(0.2)
    image[:, :20] = np.where(mask[:, :20], 0.5, 0.9)  # bright background beside the lesion ...
    tissue = np.zeros_like(mask)
    tissue[:, 20:] = True
    assert lesion_contrast(image, mask, tissue=tissue) == pytest.approx(0.2)  # ... outside the tissue: ignored
    assert lesion_contrast(image, mask) < 0.0
    assert lesion_contrast(image, mask, ring_px=1, tissue=tissue) == pytest.approx(0.2)
    assert np.isnan(lesion_contrast(image, mask, tissue=mask))  # no tissue around the lesion: no ring
    with pytest.raises(InputError, match="empty"):
        lesion_contrast(image, np.zeros_like(mask))


def test_mass_contrasts_of_mammograms_in_model_space():
    """Model-space mammograms ([-1, 1], blank background -1): contrast in [0, 1] units within the breast,
    an image without a mass skipped."""
    rr, cc = np.ogrid[:64, :64]
    breast = (rr - 32) ** 2 + cc ** 2 <= 50 ** 2  # chest wall on the left
    mass = (rr - 32) ** 2 + (cc - 25) ** 2 <= 36
    image = np.where(breast, np.where(mass, 0.6, 0.2), -1.0)  # model space: 0.8 vs 0.6 in [0, 1]
    res = mass_contrasts(np.stack([image, image]), [mass, np.zeros_like(mass)])
    assert res["n"] == 1 and res["values"] == [pytest.approx(0.2)] and res["median"] == pytest.approx(0.2)


def test_contrast_summary_drops_nans():
    s = contrast_summary([0.1, -0.1, 0.3, float("nan"), 0.2])
    assert (s["n"], s["n_nan"]) == (4, 1)
    assert s["median"] == pytest.approx(0.15) and s["mean"] == pytest.approx(0.125)
    assert s["fraction_negative"] == pytest.approx(0.25) and s["q25"] < s["median"] < s["q75"]


@pytest.fixture(scope="module")
def prepared_train() -> Path:
    folder = PREPARED_MIAS / "train"
    if not (folder / "manifest.json").is_file():
        pytest.skip(f"prepared MIAS folder {folder} not found (scripts/prepare_real.py --config "
                    f"configs/mg_mias_data.toml makes it from ../shared/data/mias)")
    return folder


def test_mias_mass_masks_lie_in_the_breast_of_the_prepared_films(prepared_train):
    from mcfast.anatomy.masks import breast_mask
    from mcfast.io.mammo import MammoTransform

    manifest = json.loads((prepared_train / "manifest.json").read_text())
    masses = mias_mass_masks(prepared_train)
    assert masses and {m["class"] for m in masses} <= set(MIAS_MASS_CLASSES)
    for m in masses:
        assert m["file"] == manifest["items"][m["index"]]["file"]
        breast = breast_mask(from_model("mg", np.load(prepared_train / m["file"])))
        assert m["mask"].shape == breast.shape and m["mask"].any()
        col, row = (round(v) for v in m["center"])
        assert breast[row, col] and (m["mask"] & breast).sum() >= 0.9 * m["mask"].sum()
    first = next(m for m in masses if m["ref"] == "mdb002")
    item = manifest["items"][first["index"]]
    info = read_mias_info(Path(item["source"]).parent.parent / "Info.txt")
    ab = next(a for a in info["mdb002"].abnormalities if a.cls in MIAS_MASS_CLASSES)
    t = MammoTransform.from_dict(item["transform"])
    back = t.map_pixel_centers([first["center"]], inverse=True)[0]
    assert np.hypot(back[0] - ab.col, back[1] - ab.row) <= 1.0
    # the film's own disc resampled onto the framed image covers the same pixels
    film_disc = t.apply_to_mask(ab.mask(tuple(t.src_shape))).astype(bool)
    assert (film_disc & first["mask"]).sum() / (film_disc | first["mask"]).sum() > 0.9
