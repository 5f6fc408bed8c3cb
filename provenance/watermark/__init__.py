"""Invisible watermarks: keyed spread-spectrum for pixels, green lists for text."""
