"""Errors that speak to the user: what was wrong, where, and what to do."""


class EdgepackError(Exception):
    """Base class for every error the build reports as a message rather than a traceback."""


class RecipeError(EdgepackError, ValueError):
    """A recipe key or value is invalid."""


class ModelSourceError(EdgepackError):
    """A model could not be found or loaded."""


class StageError(EdgepackError):
    """A pipeline stage found a result it must not ship (parity, fusion, accuracy...)."""
