"""The control plane's services, each a small object with the collaborators it needs passed in.

``trainyard.server.platform.Platform`` (the composition root) builds them all from ``Settings``;
a test builds just the ones it needs over a SQLite store and a fake clock.

- ``auth``: who is calling (API tokens, SSO, worker credentials, their caches), users and tokens.
- ``tenancy``: teams, team secrets, the audit trail.
- ``jobs``: submit, cancel, restart, and the views of jobs and their events.
- ``files``: artifacts and working-directory bundles in object storage.
- ``logs``: a job's log, from sealed chunks and the live tail.
- ``fleet``: workers (register, heartbeat, drain) and the queues' views.
- ``attempts``: what workers report of their attempts (started, finished, log chunks).
- ``scheduling``: the leader's scheduler loop: snapshot, claims, preemptions, queue board, ETA.
- ``dispatch``: the only part that knows protobuf: leases, commands and notes to workers.
- ``reconcile``: lost workers, undelivered leases, overdue runs, stuck cancels.
- ``outbox``: the relay of committed events onto the bus.
- ``replica`` and ``board``: this replica's leadership and liveness rules; the queue board's copy.
- ``health``: what the operations routes report (leadership, readiness, metrics).
- ``blocking``: ``off_loop``, how a blocking store call leaves the event loop.
"""
