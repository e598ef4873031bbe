"""NVIDIA_REQUIRE_* parsing and checking (minictr/gpu/require.py)."""
import pytest

from minictr.gpu.require import Facts, arch_of, brand_of, failed_requirements, requirements, \
    satisfied

H200 = Facts(cuda="13.0", driver="580.65.06", arch="9.0", brand="nvidia")
OLD_T4 = Facts(cuda="11.4", driver="470.82.01", arch="7.5", brand="tesla")
CUDA_IMAGE = ("cuda>=12.4 brand=tesla,driver>=470,driver<471 brand=unknown,driver>=470,"
              "driver<471 brand=nvidia,driver>=470,driver<471")


@pytest.mark.parametrize("expr, facts, ok", [
    ("cuda>=12.4", H200, True),
    ("cuda>=13.1", H200, False),
    ("cuda>=13.0", H200, True),
    ("cuda>13.0", H200, False),
    ("cuda<14", H200, True),
    ("driver>=580.65", H200, True),
    ("driver>=580.65.07", H200, False),
    ("cuda>=12.4 brand=tesla,driver>=470,driver<471", OLD_T4, True),    # OR: 2nd alternative
    ("cuda>=12.4 brand=quadro,driver>=470,driver<471", OLD_T4, False),
    ("brand=tesla,driver>=471", OLD_T4, False),                        # AND: one fails
    (CUDA_IMAGE, H200, True),
    (CUDA_IMAGE, OLD_T4, True),
    ("arch>=8.0", H200, True),
    ("arch>=8.0", OLD_T4, False),
    ("arch=9.0", Facts(cuda="13.0", driver="580.1"), False),           # unknown arch: fails
    ("brand!=geforce", H200, True),
    ("", H200, True),
])
def test_expressions(expr, facts, ok):
    assert satisfied(expr, facts) is ok


def test_unparseable_requirement_raises():
    with pytest.raises(ValueError, match="cannot parse"):
        satisfied("cuda~12", H200)


def test_every_require_variable_must_hold_and_disable_turns_it_off():
    env = {"NVIDIA_REQUIRE_CUDA": "cuda>=12.0", "NVIDIA_REQUIRE_ARCH": "arch>=10.0"}
    assert failed_requirements(env, [H200]) == ["NVIDIA_REQUIRE_ARCH=arch>=10.0"]
    assert failed_requirements({**env, "NVIDIA_DISABLE_REQUIRE": "1"}, [H200]) == []
    # each selected GPU must satisfy it
    assert failed_requirements({"NVIDIA_REQUIRE_ARCH": "arch>=8.0"}, [H200, OLD_T4])


def test_legacy_image_requires_its_cuda_version():
    assert requirements({"CUDA_VERSION": "11.8.0"}) == {"NVIDIA_REQUIRE_CUDA": "cuda>=11.8"}
    assert requirements({"CUDA_VERSION": "11.8.0", "NVIDIA_REQUIRE_CUDA": "cuda>=11.0"}) == \
        {"NVIDIA_REQUIRE_CUDA": "cuda>=11.0"}
    assert failed_requirements({"CUDA_VERSION": "13.1.0"}, [H200]) == \
        ["NVIDIA_REQUIRE_CUDA=cuda>=13.1"]


def test_arch_and_brand_from_model_names():
    assert arch_of("NVIDIA H200") == "9.0" and arch_of("Tesla T4") == "7.5"
    assert arch_of("NVIDIA A100-SXM4-80GB") == "8.0" and arch_of("Mystery GPU") is None
    assert brand_of("Tesla V100-SXM2-16GB") == "tesla" and brand_of("NVIDIA H100") == "nvidia"
    assert brand_of("NVIDIA GeForce RTX 4090") == "geforce"
