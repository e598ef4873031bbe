"""ld.so.cache reading and writing (minictr/gpu/ldcache.py) against glibc's own ldconfig."""
import os
import shutil
import struct
import subprocess

import pytest

from minictr.gpu import ldcache
from minictr.gpu.ldcache import Entry

ENTRIES = [Entry("libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1"),
           Entry("libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
           Entry("libcuda.so", "/usr/lib/x86_64-linux-gnu/libcuda.so"),
           Entry("libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
           Entry("libc.so.6", "/usr/lib/i386-linux-gnu/libc.so.6", ldcache.FLAG_ELF_LIBC6),
           Entry("libnvidia-ml.so.1", "/usr/lib64/libnvidia-ml.so.1")]


def old_format(entries):
    """An ld.so-1.7.0 file, as glibc < 2.32 wrote it (for the parser test)."""
    strings = bytearray()
    offsets = {}
    for e in entries:
        for s in (e.key, e.value):
            if s not in offsets:
                offsets[s] = len(strings)
                strings += s.encode() + b"\0"
    head = struct.pack("<12sI", ldcache.OLD_MAGIC, len(entries))
    body = b"".join(struct.pack("<iII", e.flags, offsets[e.key], offsets[e.value])
                    for e in entries)
    return head + body + bytes(strings)


def test_round_trip_sorts_like_ldconfig():
    data = ldcache.write(ENTRIES)
    parsed = ldcache.parse(data)
    assert sorted(parsed, key=repr) == sorted(ENTRIES, key=repr)
    keys = [e.key for e in parsed]
    # descending _dl_cache_libcmp order: the loader binary-searches it
    assert keys == ["libz.so.1", "libnvidia-ml.so.1", "libcuda.so.1", "libcuda.so", "libc.so.6",
                    "libc.so.6"]


def test_libcmp_compares_digit_runs_as_numbers():
    assert ldcache.libcmp("libfoo.so.10", "libfoo.so.9") > 0
    assert ldcache.libcmp("libfoo.so.1", "libfoo.so") > 0
    assert ldcache.libcmp("lib1", "liba") > 0          # digits sort after letters
    assert ldcache.libcmp("same.so.1", "same.so.1") == 0


@pytest.mark.skipif(not shutil.which("ldconfig") and not os.path.exists("/sbin/ldconfig"),
                    reason="needs glibc's ldconfig")
def test_host_ldconfig_parses_what_we_write(tmp_path):
    path = tmp_path / "ld.so.cache"
    path.write_bytes(ldcache.write(ENTRIES))
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    out = subprocess.run([ldconfig, "-p", "-C", str(path)], capture_output=True, text=True,
                         check=True).stdout
    assert "6 libs found in cache" in out
    assert "libcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1" in out
    assert "libc.so.6 (libc6) => /usr/lib/i386-linux-gnu/libc.so.6" in out


def test_host_cache_parses_in_order_and_rewrites_identically():
    try:
        with open("/etc/ld.so.cache", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        pytest.skip("this host has no /etc/ld.so.cache")
    entries = ldcache.parse(data)
    assert entries, "the host's cache lists libraries"
    # ldconfig's own order is the order our writer produces
    assert ldcache.sort_entries(entries) == entries
    assert ldcache.parse(ldcache.write(entries)) == [e for e in entries
                                                     if not e.hwcap & ldcache.HWCAP_EXTENSION]
    libc = [e for e in entries if e.key == "libc.so.6"]
    assert libc and all(os.path.basename(e.value) == "libc.so.6" for e in libc)


def test_old_format_and_old_plus_new():
    old = old_format(ENTRIES[:3])
    assert ldcache.parse(old) == ENTRIES[:3]
    # glibc < 2.32 put the new block right after the old entries, 8-byte aligned
    # (dl-cache.c: ALIGN_CACHE(sizeof (struct cache_file) + nlibs * sizeof (struct file_entry)))
    entries_end = 16 + 3 * 12
    both = old[:entries_end] + b"\0" * (-entries_end % 8) + ldcache.write(ENTRIES)
    assert ldcache.parse(both) == ldcache.parse(ldcache.write(ENTRIES))


def test_key_filter_keeps_only_wanted_stems():
    data = ldcache.write(ENTRIES)
    keep = ldcache.key_pattern(["libcuda", "libnvidia-ml"])
    assert sorted(e.key for e in ldcache.parse(data, keep)) == \
        ["libcuda.so", "libcuda.so.1", "libnvidia-ml.so.1"]
    assert [e.key for e in ldcache.parse(old_format(ENTRIES), keep)] == \
        ["libcuda.so.1", "libcuda.so", "libnvidia-ml.so.1"]


def test_rejects_garbage_and_truncation():
    with pytest.raises(ldcache.LdCacheError):
        ldcache.parse(b"not a cache at all")
    data = ldcache.write(ENTRIES)
    with pytest.raises(ldcache.LdCacheError):
        ldcache.parse(data[:60])


def test_hwcap_subdirectory_entries_are_dropped_on_write():
    hw = Entry("libm.so.6", "/usr/lib/glibc-hwcaps/x86-64-v3/libm.so.6",
               hwcap=ldcache.HWCAP_EXTENSION | 1)
    assert ldcache.parse(ldcache.write(ENTRIES + [hw])) == ldcache.parse(ldcache.write(ENTRIES))


def test_merge_replaces_image_entries_of_injected_keys():
    image = [Entry("libcuda.so.1", "/usr/local/baked/libcuda.so.1"), ENTRIES[0]]
    injected = [Entry("libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1")]
    merged = ldcache.merge(image, injected)
    assert [e.value for e in merged if e.key == "libcuda.so.1"] == \
        ["/usr/lib/x86_64-linux-gnu/libcuda.so.1"]
    assert ENTRIES[0] in merged


def test_sort_key_agrees_with_libcmp():
    names = ["libz.so.1", "libz.so", "libz3.so.4", "libc.so.6", "libcuda.so.1", "libcuda.so",
             "libfoo.so.10", "libfoo.so.9", "lib1", "liba", "libx-1.2.so", "libx-1.10.so"]
    for a in names:
        for b in names:
            got = (ldcache.sort_key(a) > ldcache.sort_key(b)) - (ldcache.sort_key(a) <
                                                                ldcache.sort_key(b))
            want = ldcache.libcmp(a, b)
            assert got == (want > 0) - (want < 0), (a, b)


def _host_cache():
    try:
        with open("/etc/ld.so.cache", "rb") as f:
            return f.read()
    except FileNotFoundError:
        pytest.skip("this host has no /etc/ld.so.cache")


INJECTED = [Entry("libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
            Entry("libcuda.so", "/usr/lib/x86_64-linux-gnu/libcuda.so"),
            Entry("libnvidia-ml.so.1", "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"),
            Entry("libc.so.6", "/opt/replaced/libc.so.6"),
            Entry("aaa-first.so.1", "/x/aaa"), Entry("zzzz-last.so.1", "/x/zzzz")]


@pytest.mark.parametrize("image", ["host", "small", "old", "none"])
def test_splice_equals_the_general_merge(image):
    data = {"host": _host_cache() if image == "host" else None,
            "small": ldcache.write(ENTRIES), "old": old_format(ENTRIES), "none": None}[image]
    spliced = ldcache.splice(data, INJECTED)
    image_entries = ldcache.parse(data) if data else []
    expected = ldcache.sort_entries(ldcache.merge(image_entries, INJECTED))
    got = ldcache.parse(spliced)
    assert got == expected            # same entries, in the loader's order
    assert [e.value for e in got if e.key == "libc.so.6" and e.is_x86_64] == \
        ["/opt/replaced/libc.so.6"]


def test_splice_output_is_read_by_host_ldconfig(tmp_path):
    if not shutil.which("ldconfig"):
        pytest.skip("needs glibc's ldconfig")
    path = tmp_path / "c"
    path.write_bytes(ldcache.splice(_host_cache(), INJECTED))
    out = subprocess.run(["ldconfig", "-p", "-C", str(path)], capture_output=True, text=True,
                         check=True).stdout
    assert "libcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1" in out
    assert "zzzz-last.so.1 (libc6,x86-64) => /x/zzzz" in out
