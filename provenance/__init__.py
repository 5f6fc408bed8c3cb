"""mdiff.provenance frontend (see DESIGN.md)."""
