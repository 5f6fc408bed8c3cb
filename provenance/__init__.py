"""mdiff.provenance: C2PA manifests, invisible watermarks and verification for every output."""
