"""mdiff.video frontend (see DESIGN.md)."""
