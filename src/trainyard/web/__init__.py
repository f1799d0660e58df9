"""The web UI: hand-written static HTML/JS/CSS served by the control plane at ``/``.

No build step: the files in ``static/`` are what the browser runs. The page holds no data until the
user's token is known; every request it makes goes through the public REST API with that token.
"""

from trainyard.web.routes import STATIC_DIR, router

__all__ = ["STATIC_DIR", "router"]
