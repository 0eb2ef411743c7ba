"""Pod sandboxes: lifecycle, CNI networking, network namespaces."""
