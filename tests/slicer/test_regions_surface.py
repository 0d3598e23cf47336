"""The tumour's and ring's 3D surfaces (surface nets, issue 12's time per Apply): made with the fast settings, and
still where the labelmap is."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from conftest import add_ct

from TMBRBLib.slicer import mrml as ma
from TMBRBLib.volumes import RegionVolume


def test_surfaces_use_surface_nets_and_enclose_the_labelmap(scene):
    img = sitk.GetImageFromArray(np.zeros((40, 60, 60), np.int16))
    img.SetSpacing((0.7, 0.7, 2.5))
    img.SetOrigin((-5.0, 12.0, 40.0))
    ct = add_ct(scene, img)
    zz, yy, xx = np.indices((16, 40, 40))
    d = np.sqrt(((zz - 8) * 2.5) ** 2 + ((yy - 20) * 0.7) ** 2 + ((xx - 20) * 0.7) ** 2)
    tumour, ring = (d < 8).astype(np.uint8), ((d >= 8) & (d < 13)).astype(np.uint8)
    lo = (10, 8, 12)
    node = ma.regions_segmentation(scene, ct, RegionVolume(tumour, lo, None), RegionVolume(ring, lo, None))
    seg = node.GetSegmentation()
    assert {k: seg.GetConversionParameter(k) for k in ma.SURFACE_CONVERSION} == ma.SURFACE_CONVERSION
    ijk_to_ras = ma.ijk_to_ras(ct)
    for name, mask in (("Tumour", tumour), ("Peritumoral ring", ring)):
        poly = seg.GetSegment(seg.GetSegmentIdBySegmentName(name)).GetRepresentation("Closed surface")
        assert poly is not None and poly.GetNumberOfPoints() > 100, name
        kji = np.argwhere(mask) + np.array(lo[::-1])
        pts = np.c_[kji[:, ::-1], np.ones(len(kji))] @ ijk_to_ras.T
        b = np.array(poly.GetBounds()).reshape(3, 2)
        # the surface's extent is the labelmap's voxel centres' extent, give or take one voxel (smoothing shrinks)
        np.testing.assert_allclose(b[:, 0], pts[:, :3].min(0), atol=2.6)
        np.testing.assert_allclose(b[:, 1], pts[:, :3].max(0), atol=2.6)
