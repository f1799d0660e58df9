"""The output formats `-o` accepts: apart from ``output`` (rich, YAML, the SDK) so that the option's
declaration in ``trainyard.cli.app`` costs nothing to the commands that print no table (`yard
worker`, `yard up`: long-running processes whose memory is measured in bench/footprint.py)."""

from __future__ import annotations

from enum import StrEnum


class Format(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"
