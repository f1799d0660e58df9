"""Pure data: job specs, resources, lifecycle states. No I/O lives here."""
