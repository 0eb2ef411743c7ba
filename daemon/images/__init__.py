"""Images: references, registries, the content and image stores, pull, leases, GC."""
