"""The control plane: REST API, worker gRPC service, scheduler, reconciler and outbox relay."""
