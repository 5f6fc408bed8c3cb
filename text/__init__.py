"""mdiff.text frontend (see DESIGN.md)."""
