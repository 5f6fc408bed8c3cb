"""Tests of the mdiff.video frontend."""
