"""Class areas and map accuracy from a reference sample: the stratified estimator of Olofsson et al.

A classified map's pixel counts are a biased estimate of class areas whenever the map has errors
(omission of a class and commission into it rarely cancel), so the accepted practice for reporting
areas from a map is Olofsson, Foody, Herold, Stehman, Woodcock & Wulder 2014, "Good practices for
estimating area and assessing accuracy of land change", Remote Sensing of Environment 148, 42-57:

- the map classes are the strata; W_i is the share of the map's pixels in class i;
- a reference sample (pixels whose true class is known, never used to train the classifier) gives
  an error matrix of counts n_ij, row i = map class, column j = reference class, n_i. row sums;
- the estimated area proportions are p_ij = W_i n_ij / n_i. (the paper's Table 9), the class
  area A_j = A_total * p_.j with S(p_.j)^2 = sum_i W_i^2 (n_ij/n_i.)(1 - n_ij/n_i.) / (n_i. - 1)
  and a 95% interval of +- 1.96 * S(p_.j) * A_total;
- user's accuracy U_i = p_ii / p_i., producer's P_j = p_jj / p_.j, overall O = sum_j p_jj, with
  the variances of the paper's eq. 5-7: V(O) = sum_i W_i^2 U_i (1 - U_i) / (n_i. - 1),
  V(U_i) = U_i (1 - U_i) / (n_i. - 1), and for P_j (eq. 7, written in proportions, which the
  pixel totals cancel out of) V(P_j) = [W_j^2 (1 - P_j)^2 U_j (1 - U_j) / (n_j. - 1)
  + P_j^2 sum_{i != j} W_i^2 (n_ij/n_i.)(1 - n_ij/n_i.) / (n_i. - 1)] / p_.j^2. The second sum
  leaves out i = j; summing over all i (as some implementations do) overstates V(P_j).

The paper's 1.96 is used for every interval (not the exact normal quantile), so the published
worked example (Section 5, Tables 8-9) reproduces to the printed digits.

Assumption, which the numbers are only as good as: the reference sample is a stratified random
sample by map class (or a simple random sample, which is stratified with proportional
allocation). Labels collected by a person where they chose to look, and held-out training labels
in particular, are not a probability sample: the formulas still run, but the areas and intervals
they give are indicative, not design-unbiased estimates.

Strata the sample cannot support are reported, not hidden:

- a class that is mapped but has no reference sample (n_i. = 0) cannot be estimated. Its mapped
  area is taken as-is (the stratum counted as mapped without error, p_ii = W_i) with zero
  variance, its user's accuracy is NaN, and it is listed in `AreaEstimate.unsampled`. Every
  interval then understates the uncertainty, and O and P are optimistic by however wrong that
  stratum really is.
- a class with a single reference sample (n_i. = 1) has no variance estimate (n_i. - 1 = 0). Its
  variance terms are taken as 0 in the sums for the areas, O and P (so those intervals understate
  the uncertainty), its own user's-accuracy interval is NaN (there is nothing to estimate it
  from), and it is listed in `AreaEstimate.single_sample`.
- a class whose sample shows no error (no omission, no commission) gets a zero-width area interval:
  the sample was too small to see its errors (`AreaEstimate.no_error_seen`); and a class with fewer
  than MIN_STRATUM_SAMPLES samples is listed in `AreaEstimate.few_samples`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

Z95 = 1.96  # the paper's normal quantile for a 95% interval
# reference samples a stratum needs before its interval means much (Olofsson et al. 2014 advise 50-100)
MIN_STRATUM_SAMPLES = 50


@dataclass(frozen=True, eq=False)
class AreaEstimate:
    """The result of `from_error_matrix`: every per-class array is aligned with `classes`.

    Arrays are read-only, as the dataclass is frozen; `eq=False` because the generated `==` cannot
    compare arrays. Areas are in hectares, accuracies and their 95% half widths are fractions
    (0-1). NaN marks a figure the sample cannot give (user's accuracy of an unsampled stratum,
    producer's accuracy of a class the sample never found); `as_dict` turns NaN into None.
    """

    classes: list[str]
    counts: np.ndarray  # (k, k) sample counts n_ij: row = map class, column = reference class
    map_pixels: np.ndarray  # (k,) pixels of each class in the whole map
    pixel_area_ha: float
    proportions: np.ndarray  # (k, k) estimated area proportions p_ij (Table 9 of the paper)
    mapped_area_ha: np.ndarray  # (k,) the map's own area of each class, for comparison
    area_ha: np.ndarray  # (k,) estimated area A_j
    area_ci95_ha: np.ndarray  # (k,) half width of the 95% interval of A_j
    users_accuracy: np.ndarray
    users_ci95: np.ndarray
    producers_accuracy: np.ndarray
    producers_ci95: np.ndarray
    overall_accuracy: float
    overall_ci95: float
    unsampled: list[str]  # mapped but no reference sample: mapped area taken as-is, zero variance
    single_sample: list[str]  # one reference sample: its variance terms taken as 0

    @property
    def total_area_ha(self) -> float:
        """Area of the whole map, the A_total that the proportions scale."""
        return float(self.map_pixels.sum() * self.pixel_area_ha)

    @property
    def no_error_seen(self) -> list[str]:
        """Sampled classes whose area interval has zero width: the sample saw no omission of them and
        no commission into them. That says the sample was too small to see their errors, not that
        there are none (the true area may well lie outside "± 0")."""
        sampled = self.counts.sum(axis=1) > 0
        return [c for i, c in enumerate(self.classes)
                if sampled[i] and c not in self.single_sample and self.area_ci95_ha[i] == 0]

    @property
    def few_samples(self) -> list[str]:
        """Mapped classes with fewer than MIN_STRATUM_SAMPLES reference samples: Olofsson et al. (2014)
        advise 50-100 a stratum; with fewer, the intervals are not to be relied on."""
        n = self.counts.sum(axis=1)
        return [c for i, c in enumerate(self.classes) if 0 < n[i] < MIN_STRATUM_SAMPLES and self.map_pixels[i] > 0]

    @property
    def n_samples(self) -> int:
        """Size of the reference sample."""
        return int(self.counts.sum())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict (plain floats and ints, None for NaN), e.g. for Dagster metadata."""
        per_class = {}
        for i, name in enumerate(self.classes):
            per_class[name] = {
                "mapped_pixels": _count(self.map_pixels[i]),
                "mapped_area_ha": _num(self.mapped_area_ha[i]),
                "n_samples": int(self.counts[i].sum()),
                "area_ha": _num(self.area_ha[i]),
                "area_ci95_ha": _num(self.area_ci95_ha[i]),
                "users_accuracy": _num(self.users_accuracy[i]),
                "users_ci95": _num(self.users_ci95[i]),
                "producers_accuracy": _num(self.producers_accuracy[i]),
                "producers_ci95": _num(self.producers_ci95[i]),
            }
        return {
            "classes": per_class,
            "overall_accuracy": _num(self.overall_accuracy),
            "overall_ci95": _num(self.overall_ci95),
            "n_samples": self.n_samples,
            "pixel_area_ha": _num(self.pixel_area_ha),
            "total_area_ha": _num(self.total_area_ha),
            "unsampled": list(self.unsampled),
            "single_sample": list(self.single_sample),
            "no_error_seen": self.no_error_seen,
            "few_samples": self.few_samples,
        }

    def markdown(self) -> str:
        """A Markdown table of mapped against estimated area and both accuracies, with notes."""
        decimals = 0 if self.total_area_ha >= 1000 else 2
        lines = [
            "| class | mapped ha (pixels) | estimated ha ± 95% CI | user's acc. ± 95% CI "
            "| producer's acc. ± 95% CI |",
            "|---|---:|---:|---:|---:|",
        ]
        for i, name in enumerate(self.classes):
            mapped = f"{self.mapped_area_ha[i]:,.{decimals}f} ({self.map_pixels[i]:,.0f})"
            estimated = (f"{self.area_ha[i]:,.{decimals}f} ± "
                         f"{self.area_ci95_ha[i]:,.{decimals}f}")
            if name in self.unsampled:
                estimated += " (not sampled)"
            lines.append(f"| {name.replace('|', chr(92) + '|')} | {mapped} | {estimated} | "
                         f"{_acc(self.users_accuracy[i], self.users_ci95[i])} | "
                         f"{_acc(self.producers_accuracy[i], self.producers_ci95[i])} |")
        lines.append("")
        lines.append(f"Overall accuracy {_acc(self.overall_accuracy, self.overall_ci95)}, "
                     f"from {self.n_samples:,} reference samples (Olofsson et al. 2014).")
        notes = [
            (self.unsampled, "No reference sample in: {}; their mapped area is taken as-is, so the intervals "
                             "understate the uncertainty."),
            (self.single_sample, "One reference sample only in: {}; no variance estimate, so the intervals "
                                 "understate the uncertainty."),
            (self.no_error_seen, "No error seen in the sample of: {}; a zero-width interval means the sample was "
                                 "too small to see their errors, not that there are none."),
            (self.few_samples, f"Fewer than {MIN_STRATUM_SAMPLES} reference samples in: {{}} (50-100 a stratum "
                               "are advised): their intervals are not to be relied on."),
        ]
        lines += [text.format(", ".join(classes)) for classes, text in notes if classes]
        return "\n".join(lines)


def stratified_estimate(mapped: np.ndarray | Sequence, reference: np.ndarray | Sequence,
                        map_pixels: Mapping[str, float] | np.ndarray | Sequence[float],
                        classes: list[str], pixel_area_ha: float) -> AreaEstimate:
    """Areas and accuracies from the map class and reference class of each reference sample.

    mapped[k] and reference[k] are the map's class and the true class of sample k (equal lengths,
    every value in `classes`); map_pixels is the pixel count of each class in the whole map (a
    dict by class name, or an array in the order of `classes`); pixel_area_ha the area of one
    pixel. Builds the error matrix and hands it to `from_error_matrix`, which documents the rest.
    """
    classes = _check_classes(classes)
    mapped_list = np.asarray(mapped, dtype=object).ravel().tolist()
    reference_list = np.asarray(reference, dtype=object).ravel().tolist()
    if len(mapped_list) != len(reference_list):
        raise ValueError(f"mapped and reference must have the same length, got "
                         f"{len(mapped_list)} and {len(reference_list)}")
    if not mapped_list:
        raise ValueError("no reference sample at all: mapped and reference are empty")
    index = {name: i for i, name in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for what, values in (("mapped", mapped_list), ("reference", reference_list)):
        unknown = sorted({str(v) for v in values if not isinstance(v, str) or v not in index})
        if unknown:
            raise ValueError(f"{what} has values not in classes {classes}: {unknown}")
    for m, r in zip(mapped_list, reference_list):
        counts[index[m], index[r]] += 1
    return from_error_matrix(counts, map_pixels, classes, pixel_area_ha)


def from_error_matrix(counts: np.ndarray | Sequence[Sequence[float]],
                      map_pixels: Mapping[str, float] | np.ndarray | Sequence[float],
                      classes: list[str], pixel_area_ha: float) -> AreaEstimate:
    """Areas and accuracies from an error matrix of sample counts (Olofsson et al. 2014).

    counts[i, j] is the number of reference samples mapped as classes[i] whose true class is
    classes[j]; map_pixels and pixel_area_ha as in `stratified_estimate`. A mapped class with no
    sample keeps its mapped area with zero variance and a class with one sample has its variance
    terms taken as 0 (both listed in the result; see the module docstring): in either case the
    intervals understate the uncertainty.
    """
    classes = _check_classes(classes)
    k = len(classes)
    n = _check_counts(counts, k)
    pixels = _check_map_pixels(map_pixels, classes)
    if not (isinstance(pixel_area_ha, (int, float, np.number)) and math.isfinite(pixel_area_ha)
            and pixel_area_ha > 0):
        raise ValueError(f"pixel_area_ha must be a positive number, got {pixel_area_ha!r}")
    pixel_area_ha = float(pixel_area_ha)
    if n.sum() == 0:
        raise ValueError("no reference sample at all: the error matrix is all zeros")
    total_pixels = pixels.sum()
    if total_pixels <= 0:
        raise ValueError("map_pixels are all zero: the map has no area to estimate")
    n_row = n.sum(axis=1)
    empty_but_sampled = [classes[i] for i in range(k) if n_row[i] > 0 and pixels[i] == 0]
    if empty_but_sampled:
        raise ValueError(f"classes with reference samples mapped but 0 pixels in map_pixels: "
                         f"{empty_but_sampled}")

    weights = pixels / total_pixels  # W_i
    sampled = n_row > 0
    frac = np.zeros((k, k))  # n_ij / n_i., zero for unsampled rows
    frac[sampled] = n[sampled] / n_row[sampled, None]
    proportions = weights[:, None] * frac
    unsampled_idx = np.flatnonzero(~sampled & (pixels > 0))
    proportions[unsampled_idx, unsampled_idx] = weights[unsampled_idx]  # mapped area as-is
    single_idx = np.flatnonzero(n_row == 1)

    # 1 / (n_i. - 1), or 0 where the stratum has fewer than two samples (no variance estimate)
    inv_dof = np.zeros(k)
    enough = n_row >= 2
    inv_dof[enough] = 1.0 / (n_row[enough] - 1)
    # stratum i's term in the variance of p_.j: W_i^2 (n_ij/n_i.)(1 - n_ij/n_i.) / (n_i. - 1)
    terms = weights[:, None] ** 2 * frac * (1.0 - frac) * inv_dof[:, None]
    var_col = terms.sum(axis=0)  # V(p_.j)
    total_ha = float(total_pixels) * pixel_area_ha
    col = proportions.sum(axis=0)  # p_.j
    diag = np.diag(proportions)

    users = np.full(k, np.nan)
    frac_diag = np.diag(frac)
    users[sampled] = frac_diag[sampled]  # p_ii / p_i. = n_ii / n_i.
    users_ci = np.full(k, np.nan)
    users_ci[enough] = Z95 * np.sqrt(frac_diag[enough] * (1.0 - frac_diag[enough])
                                     * inv_dof[enough])  # V(U_i)

    producers = np.full(k, np.nan)
    found = col > 0
    producers[found] = diag[found] / col[found]
    own = np.diag(terms)  # W_j^2 U_j (1 - U_j) / (n_j. - 1)
    others = np.maximum(var_col - own, 0.0)  # the sum over i != j in eq. 7
    producers_ci = np.full(k, np.nan)
    pj = producers[found]
    producers_ci[found] = Z95 * np.sqrt(((1.0 - pj) ** 2 * own[found] + pj ** 2 * others[found])
                                        / col[found] ** 2)  # eq. 7, in proportions not pixels

    return AreaEstimate(
        classes=list(classes),
        counts=_frozen(n),
        map_pixels=_frozen(pixels),
        pixel_area_ha=pixel_area_ha,
        proportions=_frozen(proportions),
        mapped_area_ha=_frozen(pixels * pixel_area_ha),
        area_ha=_frozen(col * total_ha),
        area_ci95_ha=_frozen(Z95 * np.sqrt(var_col) * total_ha),
        users_accuracy=_frozen(users),
        users_ci95=_frozen(users_ci),
        producers_accuracy=_frozen(producers),
        producers_ci95=_frozen(producers_ci),
        overall_accuracy=float(diag.sum()),
        overall_ci95=float(Z95 * math.sqrt(own.sum())),  # V(O)
        unsampled=[classes[i] for i in unsampled_idx],
        single_sample=[classes[i] for i in single_idx],
    )


def _check_classes(classes: Sequence[str]) -> list[str]:
    """The class names: a non-empty list of distinct strings (they key the dicts and rows)."""
    names = list(classes)
    if not names:
        raise ValueError("classes is empty")
    bad = [c for c in names if not isinstance(c, str)]
    if bad:
        raise ValueError(f"classes must be strings, got {bad}")
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        raise ValueError(f"classes must be distinct, repeated: {repeated}")
    return names


def _check_counts(counts: Any, k: int) -> np.ndarray:
    """The error matrix as int64: k x k, finite, whole, non-negative (they are sample counts)."""
    try:
        arr = np.asarray(counts, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"counts must be a numeric {k} x {k} matrix: {exc}") from None
    if arr.shape != (k, k):
        raise ValueError(f"counts must be a {k} x {k} matrix (one row and column per class), "
                         f"got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("counts must be finite")
    if (arr < 0).any():
        raise ValueError("counts must not be negative: they are numbers of reference samples")
    if (arr != np.round(arr)).any():
        raise ValueError("counts must be whole numbers of reference samples")
    return arr.astype(np.int64)


def _check_map_pixels(map_pixels: Any, classes: list[str]) -> np.ndarray:
    """Pixels per class as float64 in the order of `classes`, from a dict or an array."""
    if isinstance(map_pixels, Mapping):
        missing = [c for c in classes if c not in map_pixels]
        extra = sorted(str(c) for c in map_pixels if c not in classes)
        if missing or extra:
            raise ValueError(f"map_pixels must have exactly the classes {classes}: "
                             f"missing {missing}, not in classes {extra}")
        values = [map_pixels[c] for c in classes]
    else:
        values = map_pixels
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"map_pixels must be numbers: {exc}") from None
    if arr.shape != (len(classes),):
        raise ValueError(f"map_pixels must have one count per class ({len(classes)}), "
                         f"got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError("map_pixels must be finite and not negative: they are pixel counts")
    return arr


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr = np.array(arr)
    arr.setflags(write=False)
    return arr


def _num(value: Any) -> float | None:
    """A plain Python float for JSON, None for NaN (JSON has no NaN)."""
    value = float(value)
    return None if math.isnan(value) else value


def _count(value: Any) -> int | float:
    """A pixel count as an int when it is whole (it normally is), else as a float."""
    value = float(value)
    return int(value) if value.is_integer() else value


def _acc(value: float, ci: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.3f} ± {ci:.3f}" if not math.isnan(ci) else f"{value:.3f} ± n/a"
