"""Kroma: a project-first, event-sourced AI image production backend."""

__version__ = "0.1.0"
