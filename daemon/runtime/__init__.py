"""The runtime: container records, the runtime manager, shims."""
