"""The REST API's routes, one ``APIRouter`` module per resource.

``create_app`` (``trainyard.server.api``) includes them in this order, which is the order of the
OpenAPI document: jobs, logs, artifacts, fleet, admin, objects, ops, tenancy. Handlers are thin:
they check the request, call a service (``deps``) and shape the answer; none touches the store.
"""
