"""Stand-in for Raspberry Pi's python3-picamera2 + python3-libcamera inside `make pi-check`.

Raspberry Pi's apt archive (archive.raspberrypi.com) is not reachable from CI, and there is
no camera under qemu, so this package takes the place of picamera2 *and* libcamera: it is
installed where apt puts picamera2 (/usr/lib/python3/dist-packages) and offers the part of
picamera2's API that brain/hardware/picamera2_camera.py uses, with the same semantics
(RGB888 = B,G,R in memory; SensorTimestamp in ns on the monotonic clock; requests that must
be released).  Frames are synthetic.

What is real: like picamera2, whose request path imports simplejpeg (a Debian extension
module compiled against Debian's numpy 1.24), importing this package imports a Debian arm64
extension module compiled against numpy 1.x (python3-pywt).  With a numpy 2 in the venv
that import fails exactly as the real camera stack does ("numpy.dtype size changed").
Never installed outside the emulated root.
"""

from .picamera2 import Picamera2

__all__ = ["Picamera2"]
