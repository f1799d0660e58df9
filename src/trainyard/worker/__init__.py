"""The worker agent (`yard worker`): runs leased attempts as local processes and reports them."""

from trainyard.worker.agent import Agent, RegistrationRefused, main, run_agent
from trainyard.worker.config import WorkerConfig

__all__ = ["Agent", "RegistrationRefused", "WorkerConfig", "main", "run_agent"]
