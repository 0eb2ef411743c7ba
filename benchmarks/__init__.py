"""pyctr's benchmark suite: `python -m benchmarks` (see docs/profiling.md).

core       the measurement registry, results, statistics
env        what measurements share: temp dirs, registry, pyctrd's, client pool
report     table, JSON, --compare, --plot
api, memory, runc_bare, shim, start, pull, populated, lifecycle, containerd
           the measurements, one module per subject, registered in that order
"""
