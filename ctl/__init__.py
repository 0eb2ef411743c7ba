"""pyctr ctl."""
