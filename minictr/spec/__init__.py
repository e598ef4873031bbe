"""The plan: image config + options -> an OCI runtime spec (config.json as a dict), and the
container edits (CDI-shaped) that GPU, CDI and --device code apply to it.

- ``builder.build_spec``: the spec for one container (process, root, mounts, linux).
- ``edits.ContainerEdits`` / ``edits.apply_edits``: env, device nodes, mounts, hooks, gids.
- ``devices.edits_for_host_devices``: --device HOST[:CONTAINER][:rwm] as edits.

Imports nothing from image/, gpu/ or runtime/ (docs/architecture.md).
"""
