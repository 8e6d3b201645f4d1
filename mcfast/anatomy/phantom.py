"""B-spline lung CT phantom (Image Factory style): an axial chest slice in Hounsfield units.

Every organ outline is a closed cubic B-spline through randomly perturbed control points, so one
seed gives one reproducible anatomy and the same anatomy at any resolution (geometry lives in
normalised coordinates; only rasterisation and noise depend on ``size``).

Layers, outside in: air/background (-1000) with a patient table, body (skin + subcutaneous fat
about -100), a muscle ring (about 40), the thoracic cavity (mediastinal fat) holding two lungs
(parenchyma about -850 with a gravity-dependent gradient and vessel trees of 0-40 HU), the heart
(about 40), the descending aorta, the spine (cortical shell ~900, cancellous ~400) and ribs.
CT-like correlated noise is added last.

``breast_phantom`` lives in :mod:`mcfast.anatomy.breast_phantom`; the curve, rasterisation and noise
helpers both use are in :mod:`mcfast.anatomy.geometry`.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from mcfast.anatomy.geometry import (MAX_SIZE, MIN_SIZE, check_size, closed_bspline,  # noqa: F401
                                     correlated_noise, ellipse_ctrl, fill_curve)
from mcfast.errors import InputError

AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
LUNG_HU = -850.0
HEART_HU = 40.0
VESSEL_HU = 35.0
CANCELLOUS_BONE_HU = 400.0
CORTICAL_BONE_HU = 900.0
RIB_HU = 700.0

#: Chest walls a phantom can have: "ring", a fat layer over an even muscle ring (the phantom as it was);
#: "muscles", the muscle groups of a real chest wall (paraspinal, pectoral, latissimus) as thickenings of
#: the wall, so that the wall is thick behind the spine and thin at the sides (:func:`_wall_depth`).
WALLS = ("ring", "muscles")
#: The blood pool HU a phantom accepts: below -100 HU a pixel is fat, not blood; above 600 HU it is beyond
#: the arterial phase of an iodinated contrast scan.
BLOOD_HU_RANGE = (-100, 600)

# Right lung (image left) template in thoracic-cavity units: the cavity is the unit disc.
# Lateral border follows the ribs, the medial border is concave around the mediastinum and
# the posterior tip wraps around the spine (costovertebral recess).
_RIGHT_LUNG = np.array([
    (-0.12, -0.80), (-0.40, -0.80), (-0.70, -0.58), (-0.89, -0.22), (-0.91, 0.15),
    (-0.80, 0.50), (-0.56, 0.76), (-0.30, 0.82), (-0.18, 0.60), (-0.15, 0.20), (-0.13, -0.30),
])
# Left lung (image right): mirror image with the medial border pushed out by the heart.
_LEFT_LUNG = np.array([
    (0.25, -0.80), (0.45, -0.80), (0.72, -0.56), (0.89, -0.20), (0.90, 0.15),
    (0.79, 0.50), (0.56, 0.76), (0.30, 0.82), (0.19, 0.58), (0.35, 0.22), (0.40, -0.30),
])


def _stamp_discs(field: np.ndarray, discs: list[tuple[float, float, float, float]]) -> None:
    """field = max(field, value) on every disc (x=col, y=row, radius, value), all discs in one pass."""
    if not discs:
        return
    size = field.shape[0]
    d = np.asarray(discs, dtype=np.float64)
    k = int(np.ceil(d[:, 2].max())) + 1
    off = np.arange(-k, k + 1)
    rows = np.round(d[:, 1])[:, None, None] + off[None, :, None]  # (n, 2k+1, 1)
    cols = np.round(d[:, 0])[:, None, None] + off[None, None, :]  # (n, 1, 2k+1)
    inside = ((rows - d[:, 1, None, None]) ** 2 + (cols - d[:, 0, None, None]) ** 2) <= d[:, 2, None, None] ** 2
    inside &= (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    n, _, _ = np.nonzero(inside)
    rr = np.broadcast_to(rows, inside.shape)[inside].astype(np.int64)
    cc = np.broadcast_to(cols, inside.shape)[inside].astype(np.int64)
    np.maximum.at(field, (rr, cc), d[n, 3].astype(field.dtype))


def _vessel_field(lungs: list[np.ndarray], hila: list[tuple[float, float, float]],
                  rng: np.random.Generator, size: int) -> np.ndarray:
    """Vessel density in [0, 1] inside the lungs.

    Each hilum grows a few branching trees of shrinking discs outwards (the in-plane parts of the
    pulmonary vessels); branches end at random because vessels leave the slice. Small round blobs
    add the vessels cut across. Thin vessels get a lower value: partial-volume averaging.
    """
    field = np.zeros((size, size), dtype=np.float32)
    scale = size / 256.0
    discs: list[tuple[float, float, float, float]] = []
    for lung, (hx, hy, outward) in zip(lungs, hila):
        for _ in range(int(rng.integers(3, 6))):
            stack = [(hx, hy, outward + rng.uniform(-1.4, 1.4), rng.uniform(0.9, 1.4) * scale, 0)]
            while stack:
                x, y, ang, r, depth = stack.pop()
                length = rng.uniform(8, 18) * scale
                steps = max(2, int(length / max(0.7 * r, 0.5)))
                turns = np.cumsum(rng.normal(0, 0.08, steps)) + ang
                xs = x + np.cumsum(np.cos(turns)) * length / steps
                ys = y + np.cumsum(np.sin(turns)) * length / steps
                ix, iy = np.round(xs).astype(int), np.round(ys).astype(int)
                ok = (ix >= 0) & (ix < size) & (iy >= 0) & (iy < size)
                ok[ok] = lung[iy[ok], ix[ok]]
                n_in = steps if ok.all() else int(np.argmin(ok))
                # sub-pixel vessels (small images) are drawn one pixel wide with their area fraction
                value = min(1.0, 0.25 + 0.4 * r / scale) * min(1.0, (r / 0.5) ** 2)
                discs.extend((xs[j], ys[j], max(r, 0.5), value) for j in range(n_in))
                if n_in == steps and depth < 3 and r > 0.6 * scale:
                    for turn in (-1, 1):
                        if rng.random() < 0.8:  # the rest leave the slice
                            stack.append((xs[-1], ys[-1], turns[-1] + turn * rng.uniform(0.25, 0.6),
                                          r * rng.uniform(0.6, 0.75), depth + 1))
    for lung in lungs:
        pts = np.argwhere(lung)
        if len(pts):
            for py, px in pts[rng.integers(0, len(pts), int(rng.integers(6, 14)))]:
                rad = rng.uniform(0.5, 1.3) * scale
                value = min(1.0, 0.4 + 0.3 * rad / scale) * min(1.0, (rad / 0.5) ** 2)
                discs.append((float(px), float(py), max(rad, 0.5), value))
    _stamp_discs(field, discs)
    any_lung = np.logical_or.reduce(lungs)
    return ndimage.gaussian_filter(field, 0.6 * max(scale, 0.5)) * any_lung


def _bump(angle: np.ndarray, centre: float, width: float) -> np.ndarray:
    """A smooth bump of height 1 at ``centre`` (radians, wrapped) with standard deviation ``width``."""
    d = np.angle(np.exp(1j * (angle - centre)))
    return np.exp(-0.5 * (d / width) ** 2)


def _wall_depth(angle: np.ndarray, fat: float, muscle: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(subcutaneous fat, whole wall) thickness in normalised units at each angle around the body centre
    (0 = anterior, pi = posterior, positive towards image right) for ``wall = "muscles"``.

    A real chest wall is not an even ring: behind the spine the paraspinal muscles make it 3-6 cm thick,
    the pectorals thicken it in front on both sides, latissimus and serratus at the back of each side, and
    it is thinnest laterally. Each group is a bump on the ring's even muscle layer; their heights are drawn
    per seed (people differ). The fat over them is thicker at the back than in front.
    """
    paraspinal = rng.uniform(0.10, 0.16)
    pectoral = rng.uniform(0.025, 0.06, 2)
    latissimus = rng.uniform(0.015, 0.04, 2)
    muscle_depth = (muscle + paraspinal * _bump(angle, np.pi, 0.42)
                    + sum(pectoral[k] * _bump(angle, side * 0.75, 0.3) for k, side in enumerate((-1, 1)))
                    + sum(latissimus[k] * _bump(angle, side * 2.2, 0.3) for k, side in enumerate((-1, 1))))
    fat_depth = fat * (0.7 + 0.4 * _bump(angle, np.pi, 1.2))
    return fat_depth, fat_depth + muscle_depth


def lung_phantom_labels(size: int = 256, seed: int = 0, heart: bool = True, spine: bool = True,
                        vessels: bool = True, noise_hu: float = 20.0,
                        table: bool = True, scan_circle: bool = False, wall: str = "ring",
                        blood_hu: tuple[float, float] = (HEART_HU, HEART_HU)) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Axial chest CT phantom and the masks of its compartments.

    Returns ``(hu, labels)``: ``hu`` float32 (size, size) in Hounsfield units clipped to [-1024, 3071];
    ``labels`` bool (size, size) masks: ``body``, ``lung`` (vessels inside included), ``heart``,
    ``bone``, ``fat`` (subcutaneous), ``muscle`` (chest-wall ring), ``air`` (outside body and table).
    Deterministic per ``seed``; the same seed gives the same anatomy at every ``size``.
    ``scan_circle``: outside the inscribed circle the slice is scanner padding at -1024 HU (the floor), as
    a real slice is outside its reconstruction circle (85 of the 105 training slices of
    configs/ct_real_data.toml have more than 10 % of their pixels there); every mask stops at the circle.
    ``wall``: one of :data:`WALLS`. ``blood_hu``: the range the blood pool's HU (heart chambers, aorta,
    pulmonary vessels) is drawn from per seed: 40 is unenhanced blood, 150-300 a contrast-enhanced scan
    (about half of the training slices of configs/ct_real_data.toml show an enhanced aorta). The defaults
    draw the phantom as it was: the same seed gives the same pixels.
    """
    size = check_size(size)
    if not np.isfinite(noise_hu) or noise_hu < 0:
        raise InputError(f"noise_hu {noise_hu!r} must be a finite number >= 0")
    if wall not in WALLS:
        raise InputError(f"phantom wall {wall!r} must be one of {', '.join(WALLS)}")
    lo_hu, hi_hu = BLOOD_HU_RANGE
    if len(blood_hu) != 2 or not all(np.isfinite(v) for v in blood_hu) or not lo_hu <= blood_hu[0] <= blood_hu[1] <= hi_hu:
        raise InputError(f"phantom blood_hu {list(blood_hu)!r} must be [low, high] with {lo_hu} <= low <= high <= {hi_hu}")
    rng = np.random.default_rng(seed)
    # separate generators for geometry, texture/noise and vessels: the anatomy of a seed does not
    # change with the size (texture draws depend on the pixel count) or with the organ switches
    geo = np.random.default_rng(rng.integers(2**63))
    tex = np.random.default_rng(rng.integers(2**63))
    ves = np.random.default_rng(rng.integers(2**63))  # vessels=False must not shift the noise stream
    # the options' own draws (wall muscles, blood pool) come last, so the defaults keep a seed's pixels
    extra = np.random.default_rng(rng.integers(2**63))
    blood = float(extra.uniform(*blood_hu))

    # ---- geometry in normalised coordinates (u = column, v = row, both in [-1, 1]) ----
    cx, cy = geo.uniform(-0.02, 0.02), geo.uniform(0.0, 0.06)
    a_body, b_body = geo.uniform(0.80, 0.88), geo.uniform(0.52, 0.60)
    body_ctrl = ellipse_ctrl(geo, 16, 0.0, 0.0, a_body, b_body, 0.025)
    post = body_ctrl[:, 1] > 0  # flatter back (the patient lies on it) and a flatter front
    body_ctrl[post, 1] = b_body * (body_ctrl[post, 1] / b_body) ** 0.75
    body_ctrl[~post, 1] = -b_body * (-body_ctrl[~post, 1] / b_body) ** 0.9
    body_ctrl += (cx, cy)
    fat = geo.uniform(0.03, 0.07)
    muscle = geo.uniform(0.04, 0.06)
    centre = np.array([cx, cy])
    if wall == "ring":
        muscle_curve = closed_bspline(centre + (body_ctrl - centre) * (1 - fat / b_body))
        cavity_curve = closed_bspline(centre + (body_ctrl - centre) * (1 - (fat + muscle) / b_body))
        cav_x, cav_y = cx, cy
        cav_a = (a_body - fat - muscle) * 0.98
        cav_b = (b_body - fat - muscle) * 0.98
    else:  # each point of the body outline moved inwards by the wall's depth at its angle
        body_curve = closed_bspline(body_ctrl)
        radial = body_curve - centre
        radius = np.hypot(radial[:, 0], radial[:, 1])
        fat_depth, wall_depth = _wall_depth(np.arctan2(radial[:, 0], -radial[:, 1]), fat, muscle, extra)
        muscle_curve = centre + radial * (1 - fat_depth / radius)[:, None]
        cavity_curve = centre + radial * (1 - wall_depth / radius)[:, None]
        lo, hi = cavity_curve.min(axis=0), cavity_curve.max(axis=0)
        cav_x, cav_y = (lo + hi) / 2
        cav_a, cav_b = (hi - lo) / 2 * 0.98

    def cavity_to_uv(pq: np.ndarray) -> np.ndarray:
        return np.stack([cav_x + cav_a * pq[:, 0], cav_y + cav_b * pq[:, 1]], axis=1)

    lung_scale = geo.uniform(0.98, 1.06)
    lungs_pq = []
    for template in (_RIGHT_LUNG, _LEFT_LUNG):
        pq = template * lung_scale + geo.normal(0, 0.03, template.shape)
        lungs_pq.append(pq)

    heart_pq = np.array([geo.uniform(0.08, 0.18), geo.uniform(-0.25, -0.12)])
    heart_ab = (geo.uniform(0.30, 0.38), geo.uniform(0.34, 0.42))
    spine_pq = np.array([geo.uniform(-0.02, 0.02), geo.uniform(0.70, 0.78)])

    # ---- rasterise ----
    body = fill_curve(closed_bspline(body_ctrl), size)
    muscle_in = fill_curve(muscle_curve, size)
    cavity = fill_curve(cavity_curve, size)
    lung_parts = [fill_curve(closed_bspline(cavity_to_uv(pq)), size) & cavity for pq in lungs_pq]

    hu = np.full((size, size), AIR_HU, dtype=np.float32)
    hu[body] = FAT_HU
    hu[muscle_in] = SOFT_TISSUE_HU
    hu[cavity] = FAT_HU + 40.0  # mediastinal fat with some soft tissue

    # skin: a thin soft-tissue rim
    skin = body & ~ndimage.binary_erosion(body, iterations=max(1, size // 256))
    hu[skin] = SOFT_TISSUE_HU

    # every random draw happens whether or not an organ is enabled, so that switching one off leaves
    # the rest of the anatomy of a seed unchanged
    heart_uv = cavity_to_uv(heart_pq[None])[0]
    heart_ctrl = ellipse_ctrl(geo, 10, heart_uv[0], heart_uv[1], heart_ab[0] * cav_a, heart_ab[1] * cav_b,
                               0.06, angle=geo.uniform(-0.5, -0.2))
    aorta_uv = cavity_to_uv(np.array([[geo.uniform(0.16, 0.24), geo.uniform(0.50, 0.58)]]))[0]
    aorta_ctrl = ellipse_ctrl(geo, 8, *aorta_uv, 0.07 * cav_a, 0.1 * cav_b, 0.03)
    s_uv = cavity_to_uv(spine_pq[None])[0]
    rad = geo.uniform(0.075, 0.09) * a_body / 0.84
    vertebra_ctrl = ellipse_ctrl(geo, 10, s_uv[0], s_uv[1], rad * 1.1, rad, 0.03)
    canal_ctrl = ellipse_ctrl(geo, 8, s_uv[0], s_uv[1] + 1.45 * rad, 0.45 * rad, 0.4 * rad, 0.02)

    occupied = np.zeros((size, size), dtype=bool)
    heart_mask = np.zeros((size, size), dtype=bool)
    if heart:
        heart_mask = fill_curve(closed_bspline(heart_ctrl), size) & cavity
        hu[heart_mask] = HEART_HU
        # the chambers hold the blood pool inside the myocardium (the same HU when blood is unenhanced)
        chambers = fill_curve(closed_bspline(heart_uv + (heart_ctrl - heart_uv) * 0.72), size) & heart_mask
        hu[chambers] = blood
        occupied |= ndimage.binary_dilation(heart_mask, iterations=max(1, size // 128))
    # descending aorta, left-anterior of the spine
    aorta = fill_curve(closed_bspline(aorta_ctrl), size)
    hu[aorta] = blood
    occupied |= aorta

    bone = np.zeros((size, size), dtype=bool)
    if spine:
        body_v = fill_curve(closed_bspline(vertebra_ctrl), size)
        cortex = body_v & ~ndimage.binary_erosion(body_v, iterations=max(1, size // 128))
        # posterior arch and spinous process reach into the back muscles
        arch_ctrl = np.array([[s_uv[0] - 1.1 * rad, s_uv[1] + 0.8 * rad], [s_uv[0] + 1.1 * rad, s_uv[1] + 0.8 * rad],
                              [s_uv[0] + 0.15 * rad, s_uv[1] + 3.2 * rad], [s_uv[0] - 0.15 * rad, s_uv[1] + 3.2 * rad]])
        arch = fill_curve(closed_bspline(arch_ctrl), size) & body & ~body_v
        canal = fill_curve(closed_bspline(canal_ctrl), size)
        hu[body_v] = CANCELLOUS_BONE_HU
        hu[cortex | arch] = CORTICAL_BONE_HU
        hu[canal] = 20.0
        bone |= body_v | arch
        occupied |= ndimage.binary_dilation(body_v, iterations=max(1, size // 128))
    # ribs: bony ovals just outside the lungs along the lateral and posterior cavity wall
    n_ribs = int(geo.integers(6, 10))
    for side in (-1, 1):
        # angle pi/2 = posterior (next to the spine), pi = lateral, > pi = anterior
        for ang in np.linspace(0.6 * np.pi, 1.25 * np.pi, n_ribs) + geo.normal(0, 0.05, n_ribs):
            p, q = -side * np.cos(ang), np.sin(ang)
            if q < -0.6:  # no ribs in the anterior cartilage region
                continue
            ruv = np.array([cav_x + (cav_a + 0.35 * muscle) * p, cav_y + (cav_b + 0.35 * muscle) * q])
            rib_ctrl = ellipse_ctrl(geo, 6, *ruv, 0.026, 0.014, 0.1, angle=ang + np.pi / 2)
            rib = fill_curve(closed_bspline(rib_ctrl), size) & body
            hu[rib] = RIB_HU
            bone |= rib
    # sternum
    st = fill_curve(closed_bspline(ellipse_ctrl(geo, 6, cav_x, cav_y - cav_b - 0.4 * muscle, 0.05, 0.02, 0.1)), size) & body
    hu[st] = CORTICAL_BONE_HU - 300
    bone |= st

    lung_parts = [part & ~occupied & ~bone for part in lung_parts]
    lung = lung_parts[0] | lung_parts[1]

    # ---- lung parenchyma: gravity-dependent density + soft texture + vessels ----
    rows = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    dependent = np.clip((rows[:, None] - (cav_y - cav_b)) / (2 * cav_b), 0, 1) * geo.uniform(15, 35)
    parenchyma = LUNG_HU + dependent + correlated_noise((size, size), tex, 3.0 * size / 256, 12.0)
    if vessels:
        hila = []
        for part, side in zip(lung_parts, (-1.0, 1.0)):
            # hilum: the lung pixel nearest the medial middle of the lung
            target = cavity_to_uv(np.array([[side * 0.25, 0.05]]))[0]
            inner = ndimage.binary_erosion(part, iterations=max(1, size // 64))  # start off the lung border
            pts = np.argwhere(inner if inner.any() else part)
            tr, tc = (target[1] + 1) * 0.5 * size - 0.5, (target[0] + 1) * 0.5 * size - 0.5
            if len(pts):
                py, px = pts[np.argmin((pts[:, 0] - tr) ** 2 + (pts[:, 1] - tc) ** 2)]
                hila.append((float(px), float(py), 0.0 if side > 0 else np.pi))
        v = _vessel_field(lung_parts, hila, ves, size)
        parenchyma = parenchyma * (1 - v) + (VESSEL_HU + blood - HEART_HU) * v  # pulmonary vessels carry the blood
    hu[lung] = parenchyma[lung]

    # soft-tissue texture (fat lobules, muscle fibres), then partial volume at the edges
    soft = body & ~lung & ~bone
    hu[soft] += correlated_noise((size, size), tex, 2.0 * size / 256, 8.0)[soft]

    table_mask = np.zeros((size, size), dtype=bool)
    if table:
        lowest = np.nonzero(body.any(axis=1))[0].max() if body.any() else size - 1
        top = min(size - 2, lowest + max(2, size // 64))
        cols = np.arange(size)
        sag = ((cols - size / 2) / (size / 2)) ** 2 * size * 0.02  # table curves up at the sides
        rr = np.arange(size)[:, None]
        shell = (rr >= top - sag[None]) & (rr < top - sag[None] + max(1, size // 128))
        core = (rr >= top - sag[None] + max(1, size // 128)) & (rr < top - sag[None] + max(2, size // 40))
        span = np.abs(cols - size / 2) < size * 0.42
        hu[shell & span[None] & ~body] = 150.0
        hu[core & span[None] & ~body] = -300.0
        table_mask = (shell | core) & span[None] & ~body

    hu = ndimage.gaussian_filter(hu, 0.5 * max(size / 256, 0.6))
    if noise_hu > 0:
        hu += correlated_noise((size, size), tex, 0.7 * max(size / 256, 0.5), float(noise_hu), bandpass=True)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    labels = {"body": body, "lung": lung, "heart": heart_mask & ~bone,
              "bone": bone, "fat": body & ~muscle_in & ~skin & ~bone,
              "muscle": muscle_in & ~cavity & ~bone, "air": ~body & ~table_mask}
    if scan_circle:
        rr, cc = np.mgrid[:size, :size]
        outside = np.hypot(rr - (size - 1) / 2, cc - (size - 1) / 2) > size / 2
        hu[outside] = -1024.0
        labels = {name: mask & ~outside for name, mask in labels.items()}
    return hu.astype(np.float32, copy=False), labels


def lung_phantom_with_masks(size: int = 256, seed: int = 0, heart: bool = True, spine: bool = True,
                            vessels: bool = True, noise_hu: float = 20.0,
                            table: bool = True, scan_circle: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Axial chest CT phantom and its lung mask.

    Returns ``(hu, lung)``: ``hu`` float32 (size, size) in Hounsfield units clipped to [-1024, 3071],
    ``lung`` bool (size, size), the two lung fields (vessels inside them included).
    Deterministic per ``seed``; the same seed gives the same anatomy at every ``size``.
    """
    hu, labels = lung_phantom_labels(size, seed, heart, spine, vessels, noise_hu, table, scan_circle)
    return hu, labels["lung"]


def lung_phantom(size: int = 256, seed: int = 0, heart: bool = True, spine: bool = True, vessels: bool = True,
                 noise_hu: float = 20.0, table: bool = True) -> np.ndarray:
    """Axial chest CT phantom, float32 HU array (size, size); see :func:`lung_phantom_with_masks`."""
    return lung_phantom_labels(size, seed, heart, spine, vessels, noise_hu, table)[0]
