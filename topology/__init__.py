"""Drills of production topology, run by make targets, not by plain pytest."""
