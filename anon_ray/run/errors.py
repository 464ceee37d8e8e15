"""Why an asset gets no output: raised by the worker side, reported by both engines."""

from __future__ import annotations


class AssetError(Exception):
    """An asset cannot be fully processed; it gets no output (fail-closed)."""


class Timeout(AssetError):
    """The asset was open longer than `asset_timeout_s`; both engines report it as this class."""

    @staticmethod
    def after_limit(limit_s: float) -> "Timeout":
        return Timeout(f"still open after asset_timeout_s={limit_s:g} s")
