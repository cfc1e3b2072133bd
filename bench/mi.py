"""Mutual information between a trained model's features of clean and poisoned images.

Zhu, Miao, Dong & Gao, "Why Do Unlearnable Examples Work: A Novel Perspective of Mutual
Information" (ICLR 2026) argue that effective unlearnable examples lower I(Z_clean; Z_poisoned),
the mutual information between the features a model trained on the poisoned set gives to the clean
and to the poisoned version of the same training images, more so in deeper networks; that a small
conditional covariance of intra-class poisoned features lowers that MI; and that a high intra-class
cosine similarity lowers the covariance. `analyze` measures each link of that chain for one trained
model. The official MI-UE code ships no MI estimator, so the estimators here are ours:

- `GaussianMI`: each side reduced to its top principal components and whitened, the joint
  covariance shrunk with Ledoit-Wolf, then the Gaussian log-det formula. Exact for jointly
  Gaussian features (up to sampling error), a Gaussian approximation otherwise.
- `KSGMI`: the k-nearest-neighbour estimator of Kraskov, Stoegbauer & Grassberger (Phys. Rev. E
  69, 066138, 2004, algorithm 1) on fewer principal components, with scipy's KD-tree. No
  Gaussian assumption, but biased low when the MI is large or the dimension high.
- `CCAMI` (the default, first in `MISettings.estimators`): the Gaussian MI of canonical correlations, fitted and scored
  on different folds. Both estimators above keep each side's top principal components, so a
  dependence carried by low-variance directions under louder independent ones is invisible to
  them (they give ~0 where the truth is several nats); canonical correlations find shared
  directions whatever their variance.

`calibration` measures all three against correlated Gaussians whose MI is known in closed form,
including that hidden case; the report prints the table beside the measured MI. All MI values
are in nats. Every record's analysis states which images, model, layer and settings it used
(`SETUP_KEYS`), so that only comparable values are drawn together.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd
import scipy.linalg
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma
from sklearn.covariance import ledoit_wolf

from bench.config import require
from bench.train import to_float  # images enter the model as they did in training

MAX_IMAGES = 5000  # images per cell; at 5,000 samples GaussianMI is within 2% of the closed form at 8 dims (docs/reports.md)
RELATIVE_RANK_TOL = 1e-6  # singular values below this fraction of the largest are numerical zeros


def nonzero_singular_values(s: np.ndarray) -> np.ndarray:
    """Mask of the singular values `s` (largest first) that are not numerical zeros; none if all are zero."""
    return s > s[0] * RELATIVE_RANK_TOL if s.size and s[0] > 0 else np.zeros(s.shape, dtype=bool)


def principal_components(x: np.ndarray, dims: int) -> np.ndarray:
    """The top `dims` principal components of `x` (N, D), each scaled to unit variance.

    MI is invariant to invertible maps of each variable, so whitening changes nothing but puts all
    coordinates on one scale, which the max-norm of KSG and the identity target of Ledoit-Wolf
    shrinkage both assume. Components of (numerically) zero variance are dropped.
    """
    centred = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    keep = min(dims, int(nonzero_singular_values(s).sum()))
    return u[:, :keep] * math.sqrt(len(x) - 1)


def _check_pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = (x[:, None] if x.ndim == 1 else x), (y[:, None] if y.ndim == 1 else y)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"x and y must be (N, D) arrays with the same N, got shapes {x.shape} and {y.shape}")
    if len(x) < 3:
        raise ValueError(f"mutual information needs at least 3 samples, got {len(x)}")
    return x, y


@dataclass(frozen=True)
class GaussianMI:
    """I(X; Y) = 1/2 log(det S_xx det S_yy / det S) on `dims` principal components per side, in nats.

    S is the Ledoit-Wolf shrunk covariance (Ledoit & Wolf, J. Multivariate Anal. 2004) of the
    whitened components of both sides; without shrinkage the plug-in log-det is biased upward by
    about dims_x * dims_y / (2N) nats and infinite where the two sides coincide.
    """

    dims: int = 8  # principal components kept per side

    def __post_init__(self):
        require(self.dims >= 1, "gaussian_dims", f"must be at least 1, got {self.dims}")

    def estimate(self, x: np.ndarray, y: np.ndarray) -> float:
        return self.estimate_with_shrinkage(x, y)[0]

    def estimate_with_shrinkage(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """(MI in nats, the Ledoit-Wolf shrinkage intensity used, in [0, 1])."""
        x, y = _check_pair(x, y)
        zx, zy = principal_components(x, self.dims), principal_components(y, self.dims)
        if zx.shape[1] == 0 or zy.shape[1] == 0:
            return 0.0, 0.0  # a constant side carries no information
        cov, shrinkage = ledoit_wolf(np.hstack([zx, zy]))
        dx = zx.shape[1]
        logdet = lambda m: np.linalg.slogdet(m)[1]  # noqa: E731 - positive definite after shrinkage
        mi = 0.5 * (logdet(cov[:dx, :dx]) + logdet(cov[dx:, dx:]) - logdet(cov))
        return float(max(mi, 0.0)), float(shrinkage)


@dataclass(frozen=True)
class KSGMI:
    """Kraskov-Stoegbauer-Grassberger estimator (algorithm 1) on `dims` principal components per side.

    I = psi(k) + psi(N) - < psi(n_x + 1) + psi(n_y + 1) >, where eps_i is the max-norm distance from
    point i to its k-th neighbour in the joint space and n_x counts the other points strictly closer
    than eps_i in the x space alone. Ties (identical features) are broken with noise 1e-10 times the
    unit scale, drawn from `seed`, as Kraskov et al. recommend.
    """

    dims: int = 4  # principal components kept per side: KSG's bias grows quickly with dimension
    k: int = 3  # neighbours; Kraskov et al. recommend 2 to 4
    seed: int = 0

    def __post_init__(self):
        require(self.dims >= 1, "ksg_dims", f"must be at least 1, got {self.dims}")
        require(self.k >= 1, "ksg_k", f"must be at least 1, got {self.k}")

    def estimate(self, x: np.ndarray, y: np.ndarray) -> float:
        x, y = _check_pair(x, y)
        require(self.k < len(x), "ksg_k", f"must be below the number of samples ({len(x)}), got {self.k}")
        zx, zy = principal_components(x, self.dims), principal_components(y, self.dims)
        if zx.shape[1] == 0 or zy.shape[1] == 0:
            return 0.0
        rng = np.random.default_rng(self.seed)
        zx = zx + 1e-10 * rng.standard_normal(zx.shape)
        zy = zy + 1e-10 * rng.standard_normal(zy.shape)
        joint = np.hstack([zx, zy])
        # k + 1 because the nearest point of each query is the point itself.
        eps = cKDTree(joint).query(joint, k=self.k + 1, p=np.inf)[0][:, -1]
        radius = np.nextafter(eps, 0)  # strictly closer than eps; the counts include the point itself
        n_x = cKDTree(zx).query_ball_point(zx, radius, p=np.inf, return_length=True)
        n_y = cKDTree(zy).query_ball_point(zy, radius, p=np.inf, return_length=True)
        n = len(joint)
        mi = digamma(self.k) + digamma(n) - np.mean(digamma(n_x) + digamma(n_y))
        return float(max(mi, 0.0))


@dataclass(frozen=True)
class CCAMI:
    """Gaussian MI from regularised canonical correlations, fitted and scored on different folds, in nats.

    For jointly Gaussian X and Y, I(X; Y) = -1/2 sum_i log(1 - rho_i^2) over their canonical
    correlations rho_i (Gelfand & Yaglom 1957), wherever those directions lie: unlike `GaussianMI`,
    which keeps each side's top principal components, it sees a shared signal that has little
    variance next to large independent ones. Fitted and scored on the same samples, canonical
    correlations are biased far upward (at D / N = 0.1 every direction shows rho ~ 0.3-0.6 by
    chance), so the samples are split into `folds` seeded parts; on all but one, each side's
    covariance gets a ridge of `r * mean variance` and the top `components` canonical pairs are
    fitted (fewer where the fitted cross-covariance has fewer nonzero singular values); on the part
    left out, each pair is scored by its own correlation; the parts are averaged, and the ridge
    with the highest held-out MI is kept. Held-out scoring can only lose what the fitted directions
    miss, so the estimate leans low, apart from about components / (2 N_scored) nats of chance
    correlation. Canonical correlations are capped at `max_correlation`, so identical sides give a
    large finite value instead of infinity.
    """

    components: int = 16  # canonical pairs scored on the held-out half
    ridges: tuple[float, ...] = (1e-6, 1e-4, 1e-2, 1e-1)  # ridge fractions of each side's mean variance tried
    max_correlation: float = 0.9999  # cap per canonical pair: at most 4.3 nats each
    folds: int = 5  # the samples are split in this many parts; each is scored by the fit on the others
    seed: int = 0  # the split

    def __post_init__(self):
        require(self.components >= 1, "cca_components", f"must be at least 1, got {self.components}")
        require(len(self.ridges) >= 1 and all(r > 0 for r in self.ridges), "cca_ridges",
                f"must be one or more positive fractions, got {self.ridges}")
        require(0 < self.max_correlation < 1, "max_correlation", f"must be in (0, 1), got {self.max_correlation}")
        require(self.folds >= 2, "cca_folds", f"must be at least 2 (one to fit, one to score), got {self.folds}")

    def estimate(self, x: np.ndarray, y: np.ndarray) -> float:
        return self.estimate_with_ridge(x, y)[0]

    def estimate_with_ridge(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """(MI in nats, the ridge fraction that gave it)."""
        x, y = _check_pair(x, y)
        require(len(x) >= 2 * self.folds, "n_images",
                f"CCAMI needs at least 2 samples per fold ({2 * self.folds}), got {len(x)}")
        parts = np.array_split(np.random.default_rng(self.seed).permutation(len(x)), self.folds)
        folds = []
        for i, score in enumerate(parts):
            fit = np.concatenate(parts[:i] + parts[i + 1:])
            folds.append(_Fold(x[fit], y[fit], x[score], y[score]))
        scores = [(float(np.mean([self._held_out(fold, ridge) for fold in folds])), ridge) for ridge in self.ridges]
        return max(scores, key=lambda pair: pair[0])

    def _held_out(self, fold: _Fold, ridge: float) -> float:
        x, y = fold.x, fold.y
        if x.scale <= 0 or y.scale <= 0:
            return 0.0  # a constant side carries no information
        # Whitened with (C + ridge * mean variance I)^(-1/2), the fitting parts' cross-covariance is
        # basis_x diag(w_x) core diag(w_y) basis_y^T / (n - 1): its canonical pairs are the singular
        # pairs of the small matrix `cross`, carried back through each side's whitened basis.
        w_x, w_y = x.whitening(ridge), y.whitening(ridge)
        cross = w_x[:, None] * fold.core * w_y[None, :] / (len(x.fit) - 1)
        p, q = _top_singular_pairs(cross, self.components)
        if not p.shape[1]:
            return 0.0
        a, b = x.score @ (w_x[:, None] * p), y.score @ (w_y[:, None] * q)
        # Each fitted pair scored by its own held-out correlation: under independence that adds
        # about k / (2 N_scored) nats, where the log-det of all k x k held-out correlations adds k^2 / (2 N).
        rho = np.minimum(np.abs(_pair_correlations(a, b)), self.max_correlation)
        return float(-0.5 * np.log1p(-rho**2).sum())


class _Side:
    """One side of a fold, centred on the fitting part's mean, in its covariance's eigenbasis.

    The basis has min(N_fit, D) directions, which hold all of the fitting part's variance: the
    directions outside it carry none, so the whitened cross-covariance and its canonical pairs have
    no component there. With fewer images than feature dimensions (ResNet-50's 2,048 features of a few
    thousand images) the basis comes from a QR factorisation of the images, D N^2 work, instead of
    the D x D covariance's D^3.
    """

    def __init__(self, fit: np.ndarray, score: np.ndarray):
        mean = fit.mean(axis=0)
        centred, scored = fit - mean, score - mean
        n, d = centred.shape
        self.scale = float(np.einsum("ij,ij->", centred, centred)) / ((n - 1) * d)  # mean variance, trace(C) / D
        if n < d:
            span, r = np.linalg.qr(centred.T)  # centred = r^T span^T, span's columns orthonormal (D x n)
            values, rotation = np.linalg.eigh(r @ r.T)
            self.fit, self.score = r.T @ rotation, (scored @ span) @ rotation
        else:
            values, basis = np.linalg.eigh(centred.T @ centred)
            self.fit, self.score = centred @ basis, scored @ basis
        self.values = np.maximum(values, 0) / (n - 1)  # the covariance's eigenvalues on the basis

    def whitening(self, ridge: float) -> np.ndarray:
        """The diagonal of (C + ridge * mean(diag C) I)^(-1/2) on this side's basis."""
        return 1 / np.sqrt(self.values + ridge * self.scale)


class _Fold:
    def __init__(self, x_fit, y_fit, x_score, y_score):
        self.x, self.y = _Side(x_fit, x_score), _Side(y_fit, y_score)
        self.core = self.x.fit.T @ self.y.fit  # the fitting parts' cross-products on the two bases, every ridge's


def _top_singular_pairs(m: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The left and right singular vectors of `m`'s k largest singular values, as columns, largest first.

    From the eigenvectors of m m^T (LAPACK's subset eigensolver: a fraction of a full SVD's cost);
    pairs whose singular value is numerically zero are left out, since they fit no correlation.
    """
    k = min(k, *m.shape)
    if k == 0:
        return np.zeros((m.shape[0], 0)), np.zeros((m.shape[1], 0))
    rows = len(m)
    squares, left = scipy.linalg.eigh(m @ m.T, subset_by_index=[rows - k, rows - 1], driver="evr")
    squares, left = squares[::-1], left[:, ::-1]
    values = np.sqrt(np.maximum(squares, 0))
    keep = nonzero_singular_values(values)
    left, values = left[:, keep], values[keep]
    return left, (m.T @ left) / values


def _pair_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of `a` with the same column of `b` (0 where one is constant)."""
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    norms = np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0)
    return np.divide((a * b).sum(axis=0), norms, out=np.zeros(a.shape[1]), where=norms > 0)


def gaussian_mi_closed_form(dims: int, rho: float) -> float:
    """I(X; Y) in nats for X ~ N(0, I_d) and Y = rho X + sqrt(1 - rho^2) E, E ~ N(0, I_d) independent."""
    return -0.5 * dims * math.log(1 - rho**2)


def correlated_gaussians(n: int, dims: int, rho: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n samples of the pair in `gaussian_mi_closed_form`."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dims))
    return x, rho * x + math.sqrt(1 - rho**2) * rng.standard_normal((n, dims))


def hidden_shared_signal(n: int, shared: int = 8, rho: float = 0.9, loud: int = 200, seed: int = 0
                         ) -> tuple[np.ndarray, np.ndarray]:
    """n samples where the dependence hides under louder noise: each side is `shared` coordinates of the
    `correlated_gaussians` pair (unit variance) beside `loud` independent coordinates of variance 100,
    randomly rotated. The MI is `gaussian_mi_closed_form(shared, rho)`, in directions PCA ranks last."""
    x, y = correlated_gaussians(n, shared, rho, seed)
    rng = np.random.default_rng(seed + 1)
    rotation = np.linalg.qr(rng.standard_normal((shared + loud, shared + loud)))[0]
    x = np.hstack([10 * rng.standard_normal((n, loud)), x]) @ rotation
    y = np.hstack([10 * rng.standard_normal((n, loud)), y]) @ rotation
    return x, y


HIDDEN = "8 shared dims under 200 louder ones"  # the calibration case of `hidden_shared_signal`'s defaults


def calibration(estimators: dict, n: int, dims=(1, 4, 8), rhos=(0.3, 0.6, 0.9), seed: int = 0,
                hidden: bool = True) -> pd.DataFrame:
    """Each estimator against the closed form on correlated Gaussians of `n` samples.

    `estimators` maps a name to an object with `estimate(x, y)`; an isotropic case is skipped for an
    estimator whose `dims` is below the case's dimension (its PCA would discard information by
    design). With `hidden`, every estimator also meets `hidden_shared_signal`, where the shared
    directions have the least variance: the case a PCA-based estimator cannot see.
    Columns: case, estimator, dims, rho, true, estimate, error (estimate - true, nats).
    """
    cases = [("isotropic", d, rho, lambda d=d, rho=rho: correlated_gaussians(n, d, rho, seed)) for d in dims for rho in rhos]
    if hidden:
        cases.append((HIDDEN, 8, 0.9, lambda: hidden_shared_signal(n, seed=seed)))
    rows = []
    for case, d, rho, draw in cases:
        x, y = draw()
        truth = gaussian_mi_closed_form(d, rho)
        for name, estimator in estimators.items():
            if case == "isotropic" and getattr(estimator, "dims", d) < d:
                continue
            value = estimator.estimate(x, y)
            rows.append({"case": case, "estimator": name, "dims": d, "rho": rho, "true": truth, "estimate": value,
                         "error": value - truth})
    return pd.DataFrame(rows, columns=["case", "estimator", "dims", "rho", "true", "estimate", "error"])


@dataclass(frozen=True)
class MISettings:
    """How `analyze` estimates; every field is written into the record beside the results."""

    gaussian_dims: int = 8  # principal components per side for GaussianMI
    ksg_dims: int = 4  # principal components per side for KSGMI
    ksg_k: int = 3  # neighbours for KSGMI
    cca_components: int = 16  # canonical pairs scored by CCAMI
    cca_folds: int = 5  # CCAMI's cross-fitting folds
    batch_size: int = 256  # images per forward pass
    seed: int = 0  # the subsample of images, KSG's tie-breaking noise and CCAMI's folds

    def __post_init__(self):
        require(self.batch_size >= 1, "batch_size", f"must be at least 1, got {self.batch_size}")
        self.estimators()  # their own checks name the field

    def estimators(self) -> dict:
        """Name -> estimator, the default (CCA) first: reports and figures lead with the first."""
        return {"cca": CCAMI(self.cca_components, folds=self.cca_folds, seed=self.seed),
                "gaussian": GaussianMI(self.gaussian_dims), "ksg": KSGMI(self.ksg_dims, self.ksg_k, self.seed)}


# What an MI value depends on besides the model: two records compare only where these agree.
SETUP_KEYS = ("images", "model", "layer", "max_images", "n_images", *(f.name for f in fields(MISettings) if f.name != "batch_size"))


@torch.no_grad()
def extract_features(model: torch.nn.Module, images: torch.Tensor, device: torch.device | str,
                     batch_size: int = 256) -> np.ndarray:
    """`model.features` of uint8 NCHW `images` in eval mode, as float64 (N, D); the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        out = [model.features(to_float(batch.to(device), channels_last=False)).float().cpu()
               for batch in images.split(batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).double().numpy()


def class_statistics(features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The covariance and cosine links of the MI-UE argument, on one set of features.

    cond_cov_trace: mean over classes of tr Cov(Z | y = c) (feature units squared).
    cond_cov_ratio: that mean divided by tr Cov(Z), so architectures with other feature scales compare.
    intra_class_cosine: mean over classes of the mean cosine similarity of distinct same-class pairs.
    """
    traces, cosines = [], []
    for c in np.unique(labels):
        members = features[labels == c]
        if len(members) < 2:
            continue
        traces.append(members.var(axis=0, ddof=1).sum())
        unit = members / np.maximum(np.linalg.norm(members, axis=1, keepdims=True), 1e-12)
        total = unit.sum(axis=0)
        # sum over i != j of u_i . u_j = |sum_i u_i|^2 - sum_i |u_i|^2
        cosines.append((total @ total - (unit * unit).sum()) / (len(unit) * (len(unit) - 1)))
    if not traces:
        raise ValueError("class statistics need at least one class with two or more images")
    total_trace = features.var(axis=0, ddof=1).sum()
    mean_trace = float(np.mean(traces))
    return {"cond_cov_trace": mean_trace, "cond_cov_ratio": mean_trace / total_trace if total_trace > 0 else 0.0,
            "intra_class_cosine": float(np.mean(cosines))}


def subsample(n: int, max_images: int, seed: int) -> torch.Tensor:
    """Sorted indices of min(n, max_images) images, the same for the same (n, max_images, seed)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:max_images].sort().values


def analyze(model: torch.nn.Module, clean_images: torch.Tensor, poisoned_images: torch.Tensor, labels: torch.Tensor,
            *, device: torch.device | str, max_images: int = MAX_IMAGES, settings: MISettings = MISettings()) -> dict:
    """The MI-UE analysis of one trained model, as a JSON-ready dict.

    `clean_images` and `poisoned_images` are uint8 (N, C, H, W): the same training images before and
    after the attack, in the same order; `labels` int64 (N,). A seeded subsample of `max_images`
    images is passed through `model.features` (penultimate features, eval mode, no grad, batched).

    Keys (every value a Python float, but the strings `images`, `model` and `layer`):
      mi_cca, mi_gaussian, mi_ksg   I(Z_clean; Z_poisoned) in nats by CCAMI (the default), GaussianMI, KSGMI
      cca_ridge, gaussian_shrinkage  the regularisation CCAMI chose and the Ledoit-Wolf intensity GaussianMI used
      cond_cov_trace, cond_cov_ratio, intra_class_cosine   `class_statistics` of the poisoned features
      images, model, layer, max_images, n_images, feature_dim and the MISettings fields   what was measured and how
    """
    least = 2 * settings.cca_folds  # CCAMI scores every fold on at least two images
    require(max_images >= least, "max_images", f"must be at least {least}, got {max_images}")
    if clean_images.shape != poisoned_images.shape or len(labels) != len(clean_images):
        raise ValueError(f"clean images {tuple(clean_images.shape)}, poisoned images {tuple(poisoned_images.shape)} "
                         f"and labels ({len(labels)},) must describe the same images")
    index = subsample(len(labels), max_images, settings.seed)
    z_clean = extract_features(model, clean_images[index.to(clean_images.device)], device, settings.batch_size)
    z_poisoned = extract_features(model, poisoned_images[index.to(poisoned_images.device)], device, settings.batch_size)
    y = labels[index.to(labels.device)].cpu().numpy()
    estimators = settings.estimators()
    mi_cca, ridge = estimators["cca"].estimate_with_ridge(z_clean, z_poisoned)
    mi_gaussian, shrinkage = estimators["gaussian"].estimate_with_shrinkage(z_clean, z_poisoned)
    result = {"mi_cca": mi_cca, "mi_gaussian": mi_gaussian, "mi_ksg": estimators["ksg"].estimate(z_clean, z_poisoned),
              "cca_ridge": ridge, "gaussian_shrinkage": shrinkage, **class_statistics(z_poisoned, y),
              "max_images": max_images, "n_images": len(index), "feature_dim": z_clean.shape[1], **asdict(settings)}
    return {key: float(value) for key, value in result.items()} | {"images": IMAGES, "model": MODEL, "layer": LAYER}


IMAGES = "train"  # the cell's training images (its subset of the dataset), clean and poisoned versions
MODEL = "victim"  # the cell's model as training left it (last epoch), in eval mode
LAYER = "features"  # the penultimate representation, `model.features`
