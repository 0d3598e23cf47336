"""Volumes that live in a small region of the CT's grid: expanded to the full grid only when asked, and written to
NRRD slice by slice, so a 512x512x300 CT never needs a full-size float copy in memory."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

_NRRD_TYPES = {np.dtype(np.float32): "float", np.dtype(np.uint8): "uint8", np.dtype(np.int16): "int16"}


@dataclass(frozen=True)
class Geometry:
    """The voxel grid of an image (size x, y, z; spacing; origin; direction, row-major 3x3), LPS."""

    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]

    @staticmethod
    def of(img: sitk.Image) -> "Geometry":
        return Geometry(tuple(img.GetSize()), tuple(img.GetSpacing()), tuple(img.GetOrigin()), tuple(img.GetDirection()))

    def apply(self, img: sitk.Image) -> sitk.Image:
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img


@dataclass
class RegionVolume:
    """A volume that is zero outside the index region [lo, lo + shape) of a grid; `data` is (z, y, x)."""

    data: np.ndarray
    lo: Tuple[int, int, int]  # x, y, z
    grid: Geometry

    def region_image(self) -> sitk.Image:
        img = sitk.GetImageFromArray(self.data)
        img.SetSpacing(self.grid.spacing)
        img.SetDirection(self.grid.direction)
        m = np.array(self.grid.direction).reshape(3, 3) @ np.diag(self.grid.spacing)
        img.SetOrigin(tuple(np.array(self.grid.origin) + m @ np.array(self.lo, float)))
        return img

    def full_array(self) -> np.ndarray:
        out = np.zeros(self.grid.size[::-1], self.data.dtype)
        x0, y0, z0 = self.lo
        dz, dy, dx = self.data.shape
        out[z0:z0 + dz, y0:y0 + dy, x0:x0 + dx] = self.data
        return out

    def full_image(self) -> sitk.Image:
        return self.grid.apply(sitk.GetImageFromArray(self.full_array()))

    def write_nrrd(self, path: Union[str, Path], compresslevel: int = 1) -> Path:
        return write_region_nrrd(path, self.data, self.lo, self.grid, compresslevel)


def _deflate_slice(raw: bytes, level: int) -> bytes:
    """Raw deflate blocks of ``raw`` from a fresh compressor, ending byte-aligned and not final (a sync flush)."""
    c = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(raw) + c.flush(zlib.Z_SYNC_FLUSH)


def write_region_nrrd(path: Union[str, Path], data: np.ndarray, lo: Sequence[int], grid: Geometry,
                      compresslevel: int = 1) -> Path:
    """Write a full-grid NRRD (gzip) whose voxels are `data` at index offset lo and zero elsewhere, one slice at a
    time. Readable by SimpleITK, 3D Slicer and pynrrd like any NRRD."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(data.dtype)
    if dtype not in _NRRD_TYPES:
        raise ValueError(f"unsupported voxel type {dtype}")
    nx, ny, nz = (int(v) for v in grid.size)
    d = np.array(grid.direction, float).reshape(3, 3)
    sp = np.array(grid.spacing, float)
    dirs = " ".join("(" + ",".join(f"{v:.17g}" for v in d[:, i] * sp[i]) + ")" for i in range(3))
    header = ("NRRD0004\n# Complete NRRD file format specification at:\n"
              "# http://teem.sourceforge.net/nrrd/format.html\n"
              f"type: {_NRRD_TYPES[dtype]}\ndimension: 3\nspace: left-posterior-superior\n"
              f"sizes: {nx} {ny} {nz}\nspace directions: {dirs}\nkinds: domain domain domain\n"
              f"endian: little\nencoding: gzip\n"
              f"space origin: (" + ",".join(f"{v:.17g}" for v in grid.origin) + ")\n\n")
    x0, y0, z0 = (int(v) for v in lo)
    dz, dy, dx = data.shape
    zero = np.zeros((ny, nx), dtype.newbyteorder("<"))
    zbytes = zero.tobytes()
    # a gzip member whose deflate stream is a run of independently compressed slices (each ends byte-aligned with no
    # reference to the one before, as pigz writes them): the empty slice, most of the grid, is compressed once
    zdeflated = _deflate_slice(zbytes, compresslevel)
    crc, total = 0, 0
    tmp = p.with_name(p.name + ".part")
    with open(tmp, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")  # gzip header: deflate, mtime 0, unknown OS
        for z in range(nz):
            if z0 <= z < z0 + dz:
                sl = zero.copy()
                sl[y0:y0 + dy, x0:x0 + dx] = data[z - z0]
                raw = sl.tobytes()
                f.write(_deflate_slice(raw, compresslevel))
            else:
                raw = zbytes
                f.write(zdeflated)
            crc = zlib.crc32(raw, crc)
            total += len(raw)
        f.write(zlib.compressobj(compresslevel, zlib.DEFLATED, -zlib.MAX_WBITS).flush(zlib.Z_FINISH))  # last block
        f.write(struct.pack("<II", crc & 0xFFFFFFFF, total & 0xFFFFFFFF))
    tmp.replace(p)
    return p
