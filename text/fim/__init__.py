"""Fill-in-the-middle: infilling with fixed or automatic length (`infill`), held-out FIM tasks
(`tasks`) and their evaluation (`eval`)."""

from mdiff.text.fim.infilling import MARKER, InfillResult, fill, infill

__all__ = ["MARKER", "InfillResult", "fill", "infill"]
