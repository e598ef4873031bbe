"""NVIDIA_REQUIRE_* constraints, and the CUDA version a driver supports.

Syntax (nvidia-container-toolkit ``internal/requirements``, README "NVIDIA_REQUIRE_*"):
``cuda>=12.4 brand=tesla,driver>=470,driver<471`` — space separates alternatives (OR), comma
joins constraints (AND). Properties: ``cuda`` (the driver's CUDA API version), ``driver``
(the kernel driver version), ``arch`` (compute capability, e.g. 9.0), ``brand`` (tesla, nvidia,
geforce, quadro, titan, nvidiartx, ...). ``NVIDIA_DISABLE_REQUIRE`` (any true value) turns the
check off. Every ``NVIDIA_REQUIRE_*`` variable must hold.

CUDA version without loading libcuda: the toolkit asks libcuda (``cuDriverGetVersion``). minictr
never loads the driver into the launcher, so it reads the CUDA version from the driver branch
using NVIDIA's published table (CUDA Toolkit release notes, "CUDA Toolkit and Corresponding
Driver Versions"): each driver branch ships libcuda of exactly one CUDA minor version.
"""
from __future__ import annotations

import re
from minictr.records import record

# driver branch (major) -> the CUDA driver API version its libcuda reports
CUDA_BY_BRANCH = (
    (590, "13.1"), (580, "13.0"), (575, "12.9"), (570, "12.8"), (565, "12.7"), (560, "12.6"),
    (555, "12.5"), (550, "12.4"), (545, "12.3"), (535, "12.2"), (530, "12.1"), (525, "12.0"),
    (520, "11.8"), (515, "11.7"), (510, "11.6"), (495, "11.5"), (470, "11.4"), (465, "11.3"),
    (460, "11.2"), (455, "11.1"), (450, "11.0"), (440, "10.2"), (418, "10.1"), (410, "10.0"),
    (396, "9.2"), (390, "9.1"), (384, "9.0"),
)


def cuda_version_for_driver(driver_version: str) -> tuple[str | None, str | None]:
    """(CUDA version, warning or None) for a driver version like ``580.65.06``."""
    try:
        branch = int(driver_version.split(".")[0])
    except ValueError:
        return None, f"cannot read a driver branch from version {driver_version!r}"
    for known, cuda in CUDA_BY_BRANCH:
        if branch >= known:
            if branch > CUDA_BY_BRANCH[0][0] and known == CUDA_BY_BRANCH[0][0]:
                return cuda, (f"driver branch {branch} is newer than minictr's CUDA table; "
                              f"assuming CUDA {cuda} (at least)")
            return cuda, None
    return None, f"driver branch {branch} predates CUDA 9.0; CUDA version unknown"


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


# compute capability and NVML-style brand by model name; no NVML here, so this is a table
_ARCH_BY_MODEL = (
    ("B300", "10.3"), ("B200", "10.0"), ("GB200", "10.0"), ("H200", "9.0"), ("H100", "9.0"),
    ("H800", "9.0"), ("GH200", "9.0"), ("L40", "8.9"), ("L4", "8.9"), ("RTX 40", "8.9"),
    ("RTX 6000 Ada", "8.9"), ("A100", "8.0"), ("A800", "8.0"), ("A30", "8.0"), ("A40", "8.6"),
    ("A10", "8.6"), ("A16", "8.6"), ("A2", "8.6"), ("RTX 30", "8.6"), ("RTX A", "8.6"),
    ("T4", "7.5"), ("RTX 20", "7.5"), ("Quadro RTX", "7.5"), ("V100", "7.0"), ("P100", "6.0"),
    ("P40", "6.1"), ("P4", "6.1"),
)


def arch_of(model: str) -> str | None:
    for needle, arch in _ARCH_BY_MODEL:
        if needle in model:
            return arch
    return None


def brand_of(model: str) -> str:
    m = model.lower()
    for needle, brand in (("tesla", "tesla"), ("quadro", "quadro"), ("geforce", "geforce"),
                          ("titan", "titan"), ("rtx a", "nvidiartx"), ("nvidia", "nvidia")):
        if needle in m:
            return brand
    return "unknown"


@record
class Facts:
    """What a requirement is checked against (one GPU's view; arch/brand None if unknown)."""

    cuda: str | None
    driver: str
    arch: str | None = None
    brand: str | None = None


_CONSTRAINT = r"^(cuda|driver|arch|brand)(>=|<=|==|!=|=|>|<)(\S+)$"   # compiled at first use


def _holds(constraint: str, facts: Facts) -> bool:
    m = re.match(_CONSTRAINT, constraint.strip())
    if not m:
        raise ValueError(f"cannot parse requirement {constraint!r}")
    prop, op, want = m.groups()
    have = getattr(facts, prop)
    if have is None:
        return False
    if prop == "brand":
        equal = have.lower() == want.lower()
        if op in ("=", "=="):
            return equal
        if op == "!=":
            return not equal
        raise ValueError(f"brand only takes = or != in {constraint!r}")
    a, b = version_tuple(have), version_tuple(want)
    n = max(len(a), len(b))
    a, b = a + (0,) * (n - len(a)), b + (0,) * (n - len(b))
    return {">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b, "=": a == b, "==": a == b,
            "!=": a != b}[op]


def satisfied(expression: str, facts: Facts) -> bool:
    """True if any space-separated alternative has all its comma-joined constraints true."""
    alternatives = expression.split()
    if not alternatives:
        return True
    return any(all(_holds(c, facts) for c in alt.split(",") if c) for alt in alternatives)


def requirements(env: dict[str, str]) -> dict[str, str]:
    """The NVIDIA_REQUIRE_* variables to check. A legacy image (CUDA_VERSION set, no
    NVIDIA_REQUIRE_CUDA) requires ``cuda>=MAJOR.MINOR`` of its CUDA_VERSION, as the toolkit."""
    reqs = {k: v for k, v in env.items() if k.startswith("NVIDIA_REQUIRE_") and v.strip()}
    legacy = env.get("CUDA_VERSION")
    if legacy and "NVIDIA_REQUIRE_CUDA" not in env:
        parts = version_tuple(legacy)[:2]
        if parts:
            reqs["NVIDIA_REQUIRE_CUDA"] = "cuda>=" + ".".join(str(p) for p in parts)
    return reqs


def disabled(env: dict[str, str]) -> bool:
    return env.get("NVIDIA_DISABLE_REQUIRE", "").strip().lower() in ("1", "true", "yes", "on")


def failed_requirements(env: dict[str, str], facts_per_gpu: list[Facts]) -> list[str]:
    """Names and texts of the requirements that do not hold (every GPU must satisfy each)."""
    if disabled(env):
        return []
    bad = []
    for name, expr in sorted(requirements(env).items()):
        if not all(satisfied(expr, f) for f in facts_per_gpu):
            bad.append(f"{name}={expr}")
    return bad
