#!/usr/bin/env python3
"""The ASFDA Slicer module icon, bindings/slicer/ASFDA/Resources/Icons/ASFDA.png (925 bytes): 128x128
RGBA, concentric ellipses in the demo model's class colours (CSF, grey matter, white matter) over a
dark disc, with a wedge cut out (the volume worth annotating). Needs numpy.
usage: scripts/make_slicer_icon.py [OUT.png]"""
import struct, sys, zlib
import numpy as np
n = 128
y, x = np.mgrid[0:n, 0:n] + 0.5
c = n / 2
def ell(a, b): return ((x - c) / a) ** 2 + ((y - c) / b) ** 2
img = np.zeros((n, n, 4), np.uint8)
layers = [(60, 60, (40, 44, 52)), (52, 44, (120, 18, 134)), (46, 38, (205, 62, 78)), (32, 25, (245, 245, 245)),
          (10, 10, (205, 62, 78))]
for a, b, rgb in layers:
    m = ell(a, b) <= 1
    img[m, :3] = rgb
    img[m, 3] = 255
# A bright wedge cut: the pick.
ang = np.degrees(np.arctan2(y - c, x - c))
wedge = (ang > -35) & (ang < -10) & (ell(46, 38) <= 1) & (ell(10, 10) > 1)
img[wedge, :3] = (255, 200, 40)
raw = b"".join(b"\x00" + img[r].tobytes() for r in range(n))
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", n, n, 8, 6, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
open(sys.argv[1] if len(sys.argv) > 1 else "bindings/slicer/ASFDA/Resources/Icons/ASFDA.png", "wb").write(png)
