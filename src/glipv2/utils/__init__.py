"""Helpers shared by every layer: distributed collectives, atomic file I/O, box conventions."""
