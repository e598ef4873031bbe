"""What each NVIDIA_DRIVER_CAPABILITIES value brings into a container.

The lists follow libnvidia-container ``src/nvc_info.c`` (``utility_libs``, ``compute_libs``,
``video_libs``, ``graphics_libs``, ``ngx_libs``; ``utility_bins``, ``compute_bins``) and the
NVIDIA Container Toolkit's ``cmd/nvidia-container-runtime/README.md`` for the names.
"""
from __future__ import annotations

CAPABILITIES = ("compute", "compat32", "graphics", "utility", "video", "display", "ngx")
DEFAULT_CAPABILITIES = frozenset({"utility", "compute"})

_GRAPHICS = (
    "libnvidia-eglcore", "libnvidia-glcore", "libnvidia-tls", "libnvidia-glsi", "libnvidia-fbc",
    "libnvidia-ifr", "libnvidia-rtcore", "libnvoptix", "libGLX_nvidia", "libEGL_nvidia",
    "libGLESv2_nvidia", "libGLESv1_CM_nvidia", "libnvidia-glvkspirv", "libnvidia-cbl",
)

LIBRARIES: dict[str, tuple[str, ...]] = {
    "utility": ("libnvidia-ml", "libnvidia-cfg", "libnvidia-nscq"),
    "compute": ("libcuda", "libcudadebugger", "libnvidia-opencl", "libnvidia-gpucomp",
                "libnvidia-ptxjitcompiler", "libnvidia-fatbinaryloader", "libnvidia-allocator",
                "libnvidia-compiler", "libnvidia-pkcs11", "libnvidia-pkcs11-openssl3",
                "libnvidia-nvvm"),
    "video": ("libvdpau_nvidia", "libnvidia-encode", "libnvidia-opticalflow", "libnvcuvid"),
    "graphics": _GRAPHICS,
    "display": _GRAPHICS,
    "ngx": ("libnvidia-ngx",),
}

# the library each capability cannot work without: if only a copy whose version differs from
# the kernel module exists, the driver was upgraded without a reboot (or the module reloaded)
ESSENTIAL = {"compute": "libcuda", "utility": "libnvidia-ml"}

BINARIES: dict[str, tuple[str, ...]] = {
    "utility": ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced"),
    "compute": ("nvidia-cuda-mps-control", "nvidia-cuda-mps-server"),
}

# sockets of host daemons the libraries talk to (libnvidia-container nvc_info.c ``ipcs``)
IPC_SOCKETS: dict[str, tuple[str, ...]] = {
    "utility": ("/run/nvidia-persistenced/socket", "/run/nvidia-fabricmanager/socket"),
}

STEM_CAPABILITY: dict[str, str] = {
    stem: cap for cap in ("utility", "compute", "video", "ngx", "graphics")
    for stem in LIBRARIES[cap]}

ALL_STEMS = tuple(STEM_CAPABILITY)


def parse_capabilities(text: str | None) -> frozenset[str]:
    """NVIDIA_DRIVER_CAPABILITIES: a comma list or ``all``; empty or unset means the default.

    Raises ValueError naming the unknown value (the caller turns it into a GPUError)."""
    if text is None or not text.strip():
        return DEFAULT_CAPABILITIES
    items = {c.strip() for c in text.split(",") if c.strip()}
    if "all" in items:
        return frozenset(CAPABILITIES)
    unknown = sorted(items - set(CAPABILITIES))
    if unknown:
        raise ValueError(f"unknown driver capability {', '.join(unknown)} "
                         f"(known: {', '.join(CAPABILITIES)}, all)")
    return frozenset(items)


def library_stems(capabilities: frozenset[str]) -> set[str]:
    """Library stems the capabilities select (compat32 adds no stems: it adds architectures)."""
    return {stem for cap in capabilities for stem in LIBRARIES.get(cap, ())}
