"""``python -m trainyard`` is ``yard``."""

from trainyard.cli.main import main

main()
