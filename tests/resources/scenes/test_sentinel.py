import datetime as dt

import numpy as np
import pytest
import rasterio

from conftest import fixtures_dir
from resources.scenes.sentinel import remove_offset, s1_to_tessera_units, scl_clear, tessera_units_to_db


def _netcdf(name: str, variable: str) -> tuple[np.ndarray, list[dt.date]]:
    path = fixtures_dir() / "real" / "gfmap_mol_be" / name
    with rasterio.open(f"netcdf:{path}:{variable}") as src:
        data = src.read()
        days = [int(v) for v in src.tags()["NETCDF_DIM_t_VALUES"].strip("{}").split(",")]
    return data, [dt.date(1990, 1, 1) + dt.timedelta(days=d) for d in days]


def test_s1_units_formula():
    x = np.array([1.0, 0.1, 0.01, 1e-4, 0.0, -1.0, np.nan, np.inf, 1e-6], np.float64)
    units = s1_to_tessera_units(x)
    assert units.dtype == np.int16
    assert units.tolist()[:4] == [10000, 6000, 2000, 0]  # (20*log10(x) + 50) * 200, clipped at 0
    assert units.tolist()[4:8] == [0, 0, 0, 0]  # no data
    assert units[8] == 0  # -120 dB clips to 0
    assert s1_to_tessera_units(np.array([1e6]))[0] == 32767


def test_s1_units_truncate_rather_than_round():
    x = np.array([10 ** ((5999.9 / 200 - 50) / 20)])
    assert s1_to_tessera_units(x)[0] == 5999


def test_offset_removed_exactly_once_and_clipped():
    dn = np.array([1000, 1500, 900, 65535], np.uint16)
    assert remove_offset(dn, 1000).tolist() == [0, 500, 0, 64535]
    assert remove_offset(dn, 0).tolist() == dn.tolist()


def test_scl_masking_of_the_real_mol_cube_keeps_its_clear_dates():
    """Cloud (8, 9) and shadow classes are masked; 04-05 and 04-15 are clear. 04-30 is entirely
    thin cirrus (10), which TESSERA v1 keeps as valid, so it stays too."""
    scl, dates = _netcdf("cdse_sentinel2_l2a.nc", "S2-L2A-SCL")
    clear = scl_clear(scl)
    kept = [d.isoformat() for d, c in zip(dates, clear) if c.mean() > 0.5]
    assert kept == ["2023-04-05", "2023-04-15", "2023-04-30"]
    assert not clear[np.isin(scl, (8, 9))].any()
    assert not clear[scl == 2].any()  # dark-area pixels of 04-15
    assert clear[dates.index(dt.date(2023, 4, 5))].all()


def test_real_s1_cube_lands_in_plausible_tessera_units():
    packed, _ = _netcdf("cdse_sentinel1_grd.nc", "S1-SIGMA0-VV")
    vh_packed, _ = _netcdf("cdse_sentinel1_grd.nc", "S1-SIGMA0-VH")

    def linear(dn):
        valid = (dn > 0) & (dn < 65535)
        return np.where(valid, 10 ** ((20 * np.log10(np.maximum(dn, 1)) - 83) / 20), np.nan)

    vv, vh = s1_to_tessera_units(linear(packed)), s1_to_tessera_units(linear(vh_packed))
    vv_db = np.nanmedian(tessera_units_to_db(vv))
    vh_db = np.nanmedian(tessera_units_to_db(vh))
    assert -20 < vv_db < -3, vv_db
    assert vh_db < vv_db - 3, (vh_db, vv_db)
    assert (vv == 0).mean() == pytest.approx(((packed == 0) | (packed == 65535)).mean())


def test_s1_unit_is_told_from_the_values_and_implausible_values_are_counted():
    from resources.scenes.sentinel import s1_implausible, s1_to_linear, s1_unit_of

    packed, _ = _netcdf("cdse_sentinel1_grd.nc", "S1-SIGMA0-VV")
    valid = (packed > 0) & (packed < 65535)
    db = np.where(valid, 20 * np.log10(np.maximum(packed, 1)) - 83, np.nan)  # the cube's packing, in dB
    power = 10 ** (db / 10)
    assert s1_unit_of(db) == "db" and s1_unit_of(power) == "linear"
    assert s1_unit_of(db[0, :5, :5]) is None, "too few values to tell"
    np.testing.assert_allclose(s1_to_linear(db, "db"), power, rtol=1e-6)
    assert s1_implausible(db, "db")[1] == 0 and s1_implausible(power, "linear")[1] == 0
    checked, implausible = s1_implausible(packed.astype(np.float64), "linear")  # digital numbers, not gamma0
    assert implausible / checked > 0.99
