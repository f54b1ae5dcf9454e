"""The package version, in a module of its own so any stage can record it without importing
``pipeline``'s ``__init__``.
"""
from __future__ import annotations

__version__ = "0.1.0"
