"""URIs of the storage layer: local paths and s3://bucket/key, parsed and joined safely.

Only the io/ package looks at a URI's scheme; everything above it passes URIs through.
"""

from __future__ import annotations

import os
import re
import unicodedata

_MAX_KEY_BYTES = 1024  # S3's limit: reject early with a clear error instead of a 400 at upload
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class UnsafePathError(ValueError):
    """A relative path that could escape the output root or spoof another name."""


class ObjectChangedError(RuntimeError):
    """The object no longer has the version it was listed with."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def parse_uri(uri: str) -> tuple[str, str, str]:
    """('s3', bucket, key) for s3://bucket/key; ('file', '', path) for a path or file:// URI."""
    if is_s3(uri):
        bucket, _, key = uri[5:].partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {uri!r}")
        return "s3", bucket, key
    if uri.startswith("file://"):
        return "file", "", uri[7:]
    if _SCHEME.match(uri):
        raise ValueError(f"unsupported URI scheme in {uri!r}")
    return "file", "", uri



def folder(key: str) -> str:
    """A key prefix as a folder: 'in' must not match 'inbox/...'."""
    return key if not key or key.endswith("/") else key + "/"



# --- output paths -----------------------------------------------------------------------------

def _check_relpath(rel: str) -> None:
    if not rel:
        raise UnsafePathError("empty relative path")
    for ch in rel:
        # Cc: NUL and controls; Cf: invisible format chars (bidi overrides, zero-width); Cs: lone
        # surrogates from undecodable bytes.
        if ch == "\\" or unicodedata.category(ch) in ("Cc", "Cf", "Cs"):
            raise UnsafePathError(f"character U+{ord(ch):04X} not allowed in {rel!r}")
    # Compatibility forms (full-width solidus, one-dot leader, ...) look like other names or
    # separators once anything normalizes them. Compare against NFC, not the raw string, so
    # decomposed accents (macOS-style NFD names) stay valid.
    if unicodedata.normalize("NFKC", rel) != unicodedata.normalize("NFC", rel):
        raise UnsafePathError(f"look-alike Unicode (changes under NFKC) in {rel!r}")
    if rel.startswith("/"):
        raise UnsafePathError(f"absolute path {rel!r}")
    if any(part in ("", ".", "..") for part in rel.split("/")):
        raise UnsafePathError(f"empty, '.' or '..' component in {rel!r}")


def safe_join(output_root_uri: str, relpath: str) -> str:
    """`relpath` mirrored under the output root; raises UnsafePathError if it could escape it."""
    _check_relpath(relpath)
    if not is_s3(output_root_uri):
        return os.path.join(parse_uri(output_root_uri)[2], relpath)
    _, bucket, root = parse_uri(output_root_uri)
    root = root.rstrip("/")
    key = f"{root}/{relpath}" if root else relpath
    if len(key.encode()) > _MAX_KEY_BYTES:
        raise UnsafePathError(f"key longer than {_MAX_KEY_BYTES} bytes: {relpath!r}")
    return f"s3://{bucket}/{key}"


def join(root_uri: str, *parts: str) -> str:
    """Join trusted path parts (our own names, not user input: see safe_join) under a root."""
    if is_s3(root_uri):
        return "/".join([root_uri.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(root_uri, *parts)


