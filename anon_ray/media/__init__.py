"""Media I/O: photos (image), videos (packets, probe, decode, encode, concat), orientation (rotation).

Submodules are imported explicitly (`from anon_ray.media import decode`) so that image-only users
never load PyAV. Files are written through anon_ray.io.files, complete or not at all (I1).
"""

from __future__ import annotations


class MediaError(Exception):
    """A file cannot be read or written faithfully; the asset must get no output."""
