"""`yard`, the command line; the entry point is :func:`trainyard.cli.main.main`."""
