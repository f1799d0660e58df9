"""Hot keys: worker heartbeats, rate limits, the job-status cache and live log tails.

``base`` holds the ports (``Cache``, ``LogTailStore``); ``memory``, ``redis``, ``redis_tail`` and
``sql`` implement them; ``resilient`` puts Redis in front of a fallback; ``tiers`` parses limits.
"""
