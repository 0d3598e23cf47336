"""Full-grid NRRDs written from a region (TMBRBLib.volumes.write_region_nrrd): the same voxels as the full array, in
a gzip stream that every reader takes (SimpleITK, Python's gzip)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from TMBRBLib.volumes import Geometry, RegionVolume


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16])
def test_a_region_written_as_a_full_grid_reads_back_as_its_full_array(tmp_path, dtype):
    rng = np.random.default_rng(3)
    grid = Geometry((37, 29, 23), (0.7, 0.8, 2.5), (-10.0, 4.0, 100.0), (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    data = (rng.random((6, 9, 11)) * 100).astype(dtype)
    data[0, 0, 0] = 0  # zeros inside the region too
    region = RegionVolume(data, (20, 5, 15), grid)
    path = region.write_nrrd(tmp_path / "v.nrrd")
    img = sitk.ReadImage(str(path))
    assert np.array_equal(sitk.GetArrayFromImage(img), region.full_array())
    assert img.GetSize() == grid.size and np.allclose(img.GetSpacing(), grid.spacing)
    assert np.allclose(img.GetOrigin(), grid.origin) and np.allclose(img.GetDirection(), grid.direction)
    raw = path.read_bytes()
    body = gzip.decompress(raw[raw.index(b"\n\n") + 2:])  # checks the gzip trailer's CRC and length too
    assert body == region.full_array().astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    assert len(raw) < len(body) / 3  # compressed: the empty slices cost almost nothing
