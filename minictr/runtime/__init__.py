"""The runtime: executes an OCI runtime spec (namespaces, rootfs, cgroups, process)."""
