"""The one exception the data package raises for bad inputs."""

from __future__ import annotations


class DataError(ValueError):
    """A data file, folder or image is missing or malformed; the message names it."""
