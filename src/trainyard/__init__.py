"""Trainyard: an ML job platform."""

__version__ = "0.1.0"
