"""Content sniffing: refuse pickles, archives and executables whatever their file name says.

The suffix allowlist in the manifest stops a ``.pt`` from riding along by name; this stops one
renamed to ``.onnx``.  ONNX is protobuf and LiteRT is a FlatBuffer: neither starts with any of
these signatures, so the check has no false positives on real models.
"""

from __future__ import annotations

#: (prefix, what it is).  Pickle protocol 2+ starts with PROTO (0x80) and the protocol number;
#: torch.save writes a zip; ELF and shebangs are executables.
_FORBIDDEN: tuple[tuple[bytes, str], ...] = (
    *((b"\x80" + bytes([p]), "a Python pickle") for p in range(2, 6)),
    (b"PK\x03\x04", "a zip archive (e.g. a torch checkpoint)"),
    (b"\x7fELF", "an ELF executable"),
    (b"#!", "a script"),
    (b"MZ", "a Windows executable"),
    (b"\x1f\x8b", "a gzip stream"),
    (b"\x93NUMPY", "a numpy array file (may hold pickles)"),
)
SNIFF_BYTES = 8


def forbidden_content(head: bytes) -> str | None:
    """What forbidden thing ``head`` (the first bytes of a file) is, or None."""
    for prefix, what in _FORBIDDEN:
        if head.startswith(prefix):
            return what
    return None
