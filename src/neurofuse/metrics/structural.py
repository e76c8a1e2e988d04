"""Structural metrics: SSIM and MS-SSIM (2D and 3D), Qabf and Nabf (edge transfer, 2D)."""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from neurofuse.errors import InputError, UsageError
from neurofuse.metrics.registry import combine, register_metric

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _gauss(x: np.ndarray, sigma: float, win: int) -> np.ndarray:
    return ndimage.gaussian_filter(x, sigma, mode="reflect", truncate=(win // 2) / sigma)


def ssim_terms(
    x: np.ndarray, y: np.ndarray, data_range: float, win: int = 11, sigma: float = 1.5,
    k1: float = 0.01, k2: float = 0.03,
) -> tuple[float, float]:
    """(mean SSIM, mean contrast-structure) over the valid region of a Gaussian window.

    Same maths as skimage's structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False): population moments, borders of win//2 excluded from the mean.
    Works for any number of dimensions (11^3 window in 3D).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ux, uy = _gauss(x, sigma, win), _gauss(y, sigma, win)
    vx = _gauss(x * x, sigma, win) - ux * ux
    vy = _gauss(y * y, sigma, win) - uy * uy
    vxy = _gauss(x * y, sigma, win) - ux * uy
    cs = (2 * vxy + c2) / (vx + vy + c2)
    lum = (2 * ux * uy + c1) / (ux * ux + uy * uy + c1)
    crop = tuple(slice(win // 2, s - win // 2) for s in x.shape)
    return float(np.mean((lum * cs)[crop])), float(np.mean(cs[crop]))


def _avg_pool2(x: np.ndarray) -> np.ndarray:
    """2x average pooling per axis; odd axes are zero-padded on both sides (as torch avg_pool, padding=1)."""
    pads = [(s % 2, s % 2) for s in x.shape]
    x = np.pad(x, pads)
    sl = tuple(slice(0, (s // 2) * 2) for s in x.shape)
    x = x[sl]
    out = x
    for ax in range(x.ndim):
        out = np.add.reduceat(out, np.arange(0, out.shape[ax], 2), axis=ax)
    return out / 2**x.ndim


def ms_ssim_pair(x: np.ndarray, y: np.ndarray, data_range: float, win: int = 11, sigma: float = 1.5) -> float:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003) as pytorch-msssim computes it.

    Five scales with the published weights; the last scale uses mean SSIM, the others mean
    contrast-structure, each clipped at 0. Inputs whose smallest side would fall below the window
    at the fifth scale use fewer scales with the leading weights renormalised (e.g. 4 for 128^3).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    levels = 5
    while levels > 1 and min(x.shape) // 2 ** (levels - 1) < win:
        levels -= 1
    if min(x.shape) < win:
        raise InputError(f"MS-SSIM needs every side >= {win}, got shape {x.shape}")
    w = np.asarray(MS_SSIM_WEIGHTS[:levels])
    w = w / w.sum()
    vals = []
    for lev in range(levels):
        s, cs = ssim_terms(x, y, data_range, win, sigma)
        vals.append(max(s if lev == levels - 1 else cs, 0.0))
        if lev < levels - 1:
            x, y = _avg_pool2(x), _avg_pool2(y)
    return float(np.prod(np.asarray(vals) ** w))


def ssim_matlab(x: np.ndarray, y: np.ndarray, data_range: float = 1.0, sigma: float = 1.5) -> float:
    """MATLAB's `ssim(A, ref)` with its defaults (Image Processing Toolbox): Gaussian weights of standard
    deviation `sigma` on a 2 ceil(3 sigma) + 1 window, replicated borders, C1 = (0.01 L)^2, C2 = (0.03 L)^2,
    C3 = C2 / 2 (Wang's eq. 13), the mean of the map over every pixel. L is the class's range: 1 for
    doubles, whatever their values (Tang's toolbox calls it on 0-255 doubles, so C1 and C2 are ~0)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    radius = math.ceil(3 * sigma)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-(t * t) / (2 * sigma * sigma))
    g /= g.sum()

    def filt(z):
        for ax in range(z.ndim):
            z = ndimage.correlate1d(z, g, axis=ax, mode="nearest")
        return z

    mx, my = filt(x), filt(y)
    sx2, sy2, sxy = filt(x * x) - mx * mx, filt(y * y) - my * my, filt(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return float(np.mean(((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sx2 + sy2 + c2))))


@register_metric(
    "SSIM",
    "Gaussian SSIM (11x11, sigma 1.5, K1 0.01, K2 0.03) of F with each source, summed or averaged",
    "Wang, Bovik, Sheikh & Simoncelli 2004, IEEE TIP 13(4):600",
    spatial_dims=(2, 3),
)
def ssim(
    a, b, f, data_range: float = 255.0, how: str = "sum", win: int = 11, sigma: float = 1.5, variant: str = "gaussian"
) -> float:
    """SSIM(A,F) and SSIM(B,F) combined by `how`.

    variant 'gaussian': Wang's Gaussian SSIM, mean over the valid region (= VIFB's metricsSsim.m);
    'skimage_default': scikit-image's structural_similarity with its defaults (7x7 uniform window,
    sample covariance), as CDDFuse's Evaluator.SSIM calls it (data_range 2: the float default of
    scikit-image 0.19); 'matlab': MATLAB's ssim(F, S) with its defaults (`ssim_matlab`, replicated
    borders, mean over every pixel), as Tang's analysis_Reference calls it (data_range 1 on 0-255 values).
    """
    if variant == "gaussian":
        return combine(
            ssim_terms(a, f, data_range, win, sigma)[0], ssim_terms(b, f, data_range, win, sigma)[0], how
        )
    if variant == "skimage_default":
        from skimage.metrics import structural_similarity

        f = np.asarray(f, dtype=np.float64)
        return combine(
            float(structural_similarity(f, np.asarray(a, dtype=np.float64), data_range=data_range)),
            float(structural_similarity(f, np.asarray(b, dtype=np.float64), data_range=data_range)),
            how,
        )
    if variant == "matlab":
        return combine(ssim_matlab(f, a, data_range, sigma), ssim_matlab(f, b, data_range, sigma), how)
    raise UsageError(f"SSIM variant must be 'gaussian', 'skimage_default' or 'matlab', got {variant!r}")


@register_metric(
    "MS_SSIM",
    "Multi-scale SSIM (5 scales, Wang 2003 weights) of F with each source, averaged",
    "Wang, Simoncelli & Bovik 2003, Asilomar Conf. Signals Syst. Comput.",
    spatial_dims=(2, 3),
)
def ms_ssim(a, b, f, data_range: float = 255.0, how: str = "mean") -> float:
    """MS-SSIM(A,F) and MS-SSIM(B,F) combined by `how`."""
    return combine(ms_ssim_pair(a, f, data_range), ms_ssim_pair(b, f, data_range), how)


_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL_Y = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])


def _sobel_strength_angle(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel edge strength and orientation atan(gy/gx) (pi/2 where gx = 0); zero padding."""
    x = np.asarray(x, dtype=np.float64)
    gx = ndimage.correlate(x, _SOBEL_X, mode="constant")
    gy = ndimage.correlate(x, _SOBEL_Y, mode="constant")
    g = np.hypot(gx, gy)
    with np.errstate(divide="ignore", invalid="ignore"):
        ang = np.where(gx == 0, np.pi / 2, np.arctan(gy / np.where(gx == 0, 1.0, gx)))
    return g, ang


def _edge_preservation(gs, angs, gf, angf) -> np.ndarray:
    """Petrovic's Q^{SF} map: sigmoid-weighted strength and orientation preservation.

    The strength ratio is min/max, and where the two strengths are equal it is the strength value
    itself (0 where both are 0), as every reference implementation writes it (Xydeas & Petrovic's
    Qabf as in VIFB's metricsQabf.m, Tang's analysis_Qabf.m and CDDFuse's Evaluator.Qabf).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(gs > gf, gf / gs, gs / gf)
    ratio = np.where(gs == gf, gf, ratio)
    orient = 1.0 - np.abs(angs - angf) / (np.pi / 2)
    qg = 0.9994 / (1.0 + np.exp(-15.0 * (ratio - 0.5)))
    qa = 0.9879 / (1.0 + np.exp(-22.0 * (orient - 0.8)))
    return qg * qa


@register_metric(
    "Qabf",
    "Edge information transferred from A and B to F (Sobel strength and orientation), in [0, 1]",
    "Xydeas & Petrovic 2000, Electron. Lett. 36(4):308",
)
def qabf(a, b, f, strength_scale: float = 1.0) -> float:
    """sum(Q^AF w_A + Q^BF w_B) / sum(w_A + w_B) with w = Sobel strength (L = 1), zero padding.

    strength_scale multiplies the images first; it only matters where a source's and F's strengths
    are equal (VIFB's metricsQabf works on 255 x the 8-bit levels).
    """
    a, b, f = (np.asarray(x, dtype=np.float64) * strength_scale for x in (a, b, f))
    ga, aa = _sobel_strength_angle(a)
    gb, ab = _sobel_strength_angle(b)
    gf, af = _sobel_strength_angle(f)
    den = float((ga + gb).sum())
    if den == 0:
        raise InputError("Qabf undefined: both sources have no edges (constant images)")
    qaf, qbf = _edge_preservation(ga, aa, gf, af), _edge_preservation(gb, ab, gf, af)
    return float((qaf * ga + qbf * gb).sum() / den)


# Petrovic & Xydeas 2005 objective fusion performance (QABF, LABF, NABF) with B. K. Shreyamsha Kumar's
# modified artefact measure: Kumar's objective_fusion_perform_fn conventions (Sobel / 8 on a mirrored
# border, weights g^1.5 above strength 2 else 0.001, sqrt of the strength and orientation terms).
_P05 = {"td": 2.0, "wt_min": 0.001, "lg": 1.5, "nrg": 0.9999, "kg": 19.0, "sg": 0.5, "nra": 0.9995, "ka": 22.0,
        "sa": 0.5}
_SOBEL8_V = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def _p05_edges(x: np.ndarray):
    x = np.asarray(x, dtype=np.float64)
    gv = ndimage.correlate(x, _SOBEL8_V, mode="mirror")
    gh = ndimage.correlate(x, _SOBEL8_V.T, mode="mirror")
    with np.errstate(divide="ignore", invalid="ignore"):
        ang = np.where((gv == 0) & (gh == 0), 0.0, np.arctan(gv / gh))
    return np.sqrt(gh * gh + gv * gv), ang


def _p05_q(gs, angs, gf, angf):
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.where((gs == 0) | (gf == 0), 0.0, np.where(gs > gf, gf / gs, gs / gf))
    ang = np.abs(np.abs(angs - angf) - np.pi / 2) * 2 / np.pi
    qg = _P05["nrg"] / (1 + np.exp(-_P05["kg"] * (g - _P05["sg"])))
    qa = _P05["nra"] / (1 + np.exp(-_P05["ka"] * (ang - _P05["sa"])))
    return np.sqrt(qg * qa)


def petrovic2005(a, b, f) -> dict[str, float]:
    """Petrovic's QABF, LABF, NABF and Kumar's modified NABF of F from sources A and B (0-255 scale)."""
    (ga, aa), (gb, ab), (gf, af) = (_p05_edges(x) for x in (a, b, f))
    qaf, qbf = _p05_q(ga, aa, gf, af), _p05_q(gb, ab, gf, af)
    wa = np.where(ga >= _P05["td"], ga ** _P05["lg"], _P05["wt_min"])
    wb = np.where(gb >= _P05["td"], gb ** _P05["lg"], _P05["wt_min"])
    wsum = float((wa + wb).sum())
    art = (gf > ga) & (gf > gb)
    return {
        "QABF": float((qaf * wa + qbf * wb).sum() / wsum),
        "LABF": float((~art * ((1 - qaf) * wa + (1 - qbf) * wb)).sum() / wsum),
        "NABF": float((art * (2 - qaf - qbf) * (wa + wb)).sum() / wsum),
        "NABF_kumar": float((art * ((1 - qaf) * wa + (1 - qbf) * wb)).sum() / wsum),
    }


_NABF_VARIANTS = (
    ("Nabf", "NABF", False,
     "Petrovic's fusion artefacts N^{AB/F}: sum over pixels where F's edges exceed both sources' of "
     "(2 - Q^AF - Q^BF)(w_A + w_B), over sum(w_A + w_B); lower better",
     "Petrovic & Xydeas 2005, IEEE ICCV Workshop (objective fusion performance); NABF1 of Kumar's code"),
    ("Nabf_kumar", "NABF_kumar", False,
     "Kumar's modified artefacts: sum(AM [(1-Q^AF) w_A + (1-Q^BF) w_B]) / sum(w_A + w_B), AM where g_F > "
     "g_A and g_F > g_B; lower better",
     "Kumar 2013, Signal Image Video Process. 7(6):1125; Tang's analysis_nabf.m called as analysis_nabf(F, A, B)"),
    ("Nabf_tang_asrun", "NABF_kumar", True,
     "Tang's toolbox as it runs: analysis_Reference calls analysis_nabf(A, B, F) whose signature is "
     "(fused, I1, I2), so A is taken as the fused image: Nabf_kumar with sources B, F and fused A",
     "Tang et al. (SeAFusion) Evaluation-for-Image-Fusion, analysis_Reference.m -> analysis_nabf.m"),
)


def _register_nabf(name: str, key: str, asrun: bool, definition: str, reference: str) -> None:
    def fn(a, b, f) -> float:
        return petrovic2005(b, f, a)[key] if asrun else petrovic2005(a, b, f)[key]

    fn.__doc__ = f"{definition} ({reference})."
    register_metric(name, definition, reference, higher_is_better=False)(fn)


for _variant in _NABF_VARIANTS:
    _register_nabf(*_variant)


@register_metric(
    "EI",
    "Edge intensity: mean Sobel gradient magnitude of F (fspecial('sobel'), replicated border)",
    "VIFB (Zhang, Ye & Xiao 2020) metricsEdge_intensity.m",
)
def ei(a, b, f) -> float:
    """mean(sqrt(gx^2 + gy^2)) of F, Sobel by correlation with a replicated border."""
    f = np.asarray(f, dtype=np.float64)
    gx = ndimage.correlate(f, _SOBEL_Y, mode="nearest")
    gy = ndimage.correlate(f, _SOBEL_Y.T, mode="nearest")
    return float(np.mean(np.hypot(gx, gy)))


def _box_valid(x: np.ndarray, w: int) -> np.ndarray:
    """Mean over every w x w window (MATLAB filter2(ones(w)/w^2, x, 'valid'))."""
    return sliding_window_view(x, (w, w)).mean(axis=(2, 3))


def mef_ssim(sources: list[np.ndarray], f: np.ndarray, k: float = 0.03, win: int = 11, sigma: float = 1.5,
             chunk: int = 32) -> float:
    """MEF-SSIM of F against the source sequence (Ma, Zeng & Wang 2015), on 0-255 images.

    Per 11x11 patch: the sources' mean-removed patches are combined with structure-consistency
    weights into one desired patch (scaled to the largest source contrast), compared with F's patch
    by the SSIM contrast-structure term under a Gaussian window (sigma 1.5), C = (k 255)^2.
    """
    srcs = [np.asarray(s, dtype=np.float64) for s in sources]
    f = np.asarray(f, dtype=np.float64)
    eps = np.finfo(np.float64).eps
    t = np.arange(win) - win // 2
    g1 = np.exp(-(t * t) / (2 * sigma * sigma))
    g = np.outer(g1, g1).T.ravel()  # column-major, as MATLAB's window(:)
    g = g / g.sum()
    mu = [_box_valid(s, win) for s in srcs]
    ed = [np.sqrt(np.maximum(win * win * (_box_valid(s * s, win) - m * m), 0.0)) + 0.001
          for s, m in zip(srcs, mu, strict=True)]
    rows, cols = mu[0].shape
    c = (k * 255.0) ** 2
    out = np.empty((rows, cols))

    def patches(x, r0, r1):
        v = sliding_window_view(x[r0 : r1 + win - 1], (win, win))
        return v.transpose(0, 1, 3, 2).reshape(r1 - r0, cols, win * win)  # column-major within a patch

    for r0 in range(0, rows, chunk):
        r1 = min(rows, r0 + chunk)
        ps = [patches(s, r0, r1) for s in srcs]
        ms = [m[r0:r1, :, None] for m in mu]
        den = sum(np.linalg.norm(p - m, axis=-1) for p, m in zip(ps, ms, strict=True))
        tot = sum(ps)
        num = np.linalg.norm(tot - tot.mean(-1, keepdims=True), axis=-1)
        consist = (num + eps) / (den + eps)
        consist = np.where(consist > 1, 1 - eps, np.where(consist < 0, eps, consist))
        pw = np.minimum(np.tan(np.pi / 2 * consist), 10.0)
        eds = [e[r0:r1] for e in ed]
        wm = [(e / win) ** pw + eps for e in eds]
        norm = sum(wm)
        rblock = sum((w / norm)[..., None] * (p - m) / e[..., None] for w, p, m, e in zip(wm, ps, ms, eds, strict=True))
        nr = np.linalg.norm(rblock, axis=-1, keepdims=True)
        max_ed = np.maximum.reduce(eds)[..., None]
        rblock = np.where(nr > 0, rblock / np.where(nr > 0, nr, 1.0) * max_ed, rblock)
        fv = patches(f, r0, r1)
        m1, m2 = (rblock * g).sum(-1, keepdims=True), (fv * g).sum(-1, keepdims=True)
        s1 = (g * (rblock - m1) ** 2).sum(-1)
        s2 = (g * (fv - m2) ** 2).sum(-1)
        s12 = (g * (rblock - m1) * (fv - m2)).sum(-1)
        out[r0:r1] = (2 * s12 + c) / (s1 + s2 + c)
    return float(out.mean())


def _pool2_symmetric(x: np.ndarray) -> np.ndarray:
    """imfilter(x, ones(2)/4, 'symmetric', 'same') sampled at (1:2:end, 1:2:end)."""
    p = np.pad(x, ((0, 1), (0, 1)), mode="symmetric")
    y = 0.25 * (p[:-1, :-1] + p[1:, :-1] + p[:-1, 1:] + p[1:, 1:])
    return y[::2, ::2]


@register_metric(
    "MS_SSIM_mef",
    "Multi-scale MEF-SSIM of F against both sources (3 scales, weights 0.0448, 0.2856, 0.3001 normalised, "
    "product of powers); Tang's MS_SSIM column",
    "Ma, Zeng & Wang 2015, IEEE TIP 24(11):3345; Tang's analysis_ms_ssim.m / mef_ssim.m",
)
def ms_ssim_mef(a, b, f, levels: int = 3) -> float:
    """prod_l Q_l^w_l with Q_l the MEF-SSIM at scale l (2x2 mean, symmetric border, every other pixel)."""
    w = np.asarray((0.0448, 0.2856, 0.3001)[:levels])
    w = w / w.sum()
    srcs = [np.asarray(x, dtype=np.float64) for x in (a, b)]
    f = np.asarray(f, dtype=np.float64)
    if min(f.shape) / 2 ** (levels - 1) < 11:
        raise InputError(f"MS_SSIM_mef needs sides >= {11 * 2 ** (levels - 1)}, got {f.shape}")
    q = []
    for lev in range(levels):
        q.append(mef_ssim(srcs, f))
        if lev < levels - 1:
            srcs = [_pool2_symmetric(s) for s in srcs]
            f = _pool2_symmetric(f)
    return float(np.prod(np.asarray(q) ** w))
