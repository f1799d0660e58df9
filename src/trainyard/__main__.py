"""``python -m trainyard`` is ``yard``."""

import sys

# `yard up` starts its agents as `python -m trainyard worker`, and the control plane itself runs in
# `up` or `server`: processes that stay up, so they register only their own command module, not
# every command's imports (the SDK, rich, the simulator: 10 MB of each; bench/footprint.py).
_PLATFORM_COMMANDS = {
    "worker": "trainyard.cli.worker",
    "up": "trainyard.cli.platform",
    "server": "trainyard.cli.platform",
}

if len(sys.argv) > 1 and sys.argv[1] in _PLATFORM_COMMANDS:
    import importlib

    # httpx's package imports its command-line client (click, rich, pygments: 3-4 MB) whenever those
    # are installed, as typer's rich is; a None entry makes that import fail, and httpx then goes
    # without its CLI, which nothing here runs.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

    from trainyard.cli.app import app

    importlib.import_module(_PLATFORM_COMMANDS[sys.argv[1]])
    app(prog_name="yard")
else:
    from trainyard.cli.main import main

    main()
