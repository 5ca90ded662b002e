"""How Sentinel-1/2 products encode their values, and the conversion to TESSERA's units.

Kept apart from I/O so that the rules (which SCL classes are clear, how S1 backscatter becomes
TESSERA's int16 scale) are unit-tested on plain arrays, including the real cubes in the fixtures.
"""

from __future__ import annotations

import numpy as np

# SCL: 0 no data, 1 saturated, 2 dark/topographic shadow, 3 cloud shadow, 8/9 cloud, are unusable;
# 4 vegetation, 5 not vegetated, 6 water, 7 unclassified, 10 thin cirrus, 11 snow are kept (TESSERA v1).
SCL_INVALID: tuple[int, ...] = (0, 1, 2, 3, 8, 9)
S2_MAX_DN = 65535
S1_MAX_UNITS = 32767


def scl_clear(scl: np.ndarray) -> np.ndarray:
    return ~np.isin(scl, SCL_INVALID)


def remove_offset(dn: np.ndarray, offset_dn: int) -> np.ndarray:
    """Subtract the processing-baseline offset once; reflectance darker than the offset clips to 0."""
    if offset_dn == 0:
        return dn.astype(np.uint16, copy=False)
    return np.clip(dn.astype(np.int32) - offset_dn, 0, S2_MAX_DN).astype(np.uint16)


# Plausible gamma0 backscatter by unit, the same span in both: -60 dB (no return) to +20 dB (corner
# reflectors, bright urban: 0.2% of a real cube near Mol is above +10 dB). Values outside are another
# product (GRD digital numbers, amplitude) or a wrong unit, and fail the `physical_range` check.
S1_PLAUSIBLE = {"linear": (0.0, 100.0), "db": (-60.0, 20.0)}
S1_MIN_VALUES_TO_TELL_UNIT = 100


def s1_unit_of(values: np.ndarray) -> str | None:
    """"db" when most valid values are negative (linear power never is), else "linear"; None when
    there are too few valid values to tell."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v) & (v != 0)]
    if v.size < S1_MIN_VALUES_TO_TELL_UNIT:
        return None
    return "db" if (v < 0).mean() > 0.5 else "linear"


def s1_to_linear(values: np.ndarray, unit: str) -> np.ndarray:
    """Backscatter as linear power (what `s1_to_tessera_units` takes), from either unit."""
    if unit == "linear":
        return values
    with np.errstate(over="ignore", invalid="ignore"):
        return np.power(10.0, np.asarray(values, np.float64) / 10.0)


def s1_implausible(values: np.ndarray, unit: str) -> tuple[int, int]:
    """(valid values, of which implausible for `unit`)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v) & (v != 0)]
    low, high = S1_PLAUSIBLE[unit]
    return v.size, int(((v < low) | (v > high)).sum())


def s1_to_tessera_units(gamma0: np.ndarray) -> np.ndarray:
    """`clip((20*log10(x) + 50) * 200, 0, 32767)` truncated to int16; x <= 0 or non-finite -> 0 (no data)."""
    x = np.asarray(gamma0, dtype=np.float64)
    ok = np.isfinite(x) & (x > 0)
    out = np.zeros(x.shape, np.int16)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = (20.0 * np.log10(np.where(ok, x, 1.0)) + 50.0) * 200.0
    out[ok] = np.clip(scaled[ok], 0, S1_MAX_UNITS).astype(np.int16)
    return out


def tessera_units_to_db(units: np.ndarray) -> np.ndarray:
    """Inverse of the scale (up to truncation), in dB of 20*log10(x); NaN where there is no data."""
    u = np.asarray(units, dtype=np.float32)
    return np.where(u > 0, u / 200.0 - 50.0, np.nan)
