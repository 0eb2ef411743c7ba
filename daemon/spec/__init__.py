"""OCI runtime spec building: common parts, CRI and native containers, seccomp."""
