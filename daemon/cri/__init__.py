"""The CRI v1 services: thin handlers over the daemon's managers."""
