#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Write the raw BTF of a kernel image (a distribution's vmlinuz) to a file.

    scripts/vmlinuz_btf.py /boot/vmlinuz-6.12.x-arm64 > vmlinux.btf
    bpftool btf dump file vmlinux.btf format c > vmlinux.h

The kernel's own BTF (what /sys/kernel/btf/vmlinux serves when it runs) is
the .BTF section of vmlinux, and it stays in the boot image as one
contiguous blob. This finds it by its header (magic 0xeB9F, version 1, a
24-byte header whose string section follows the type section), so a
vmlinux.h for another architecture can be made without booting that
kernel. Handles a plain arm64 Image, a gzip'ed one and an EFI zboot image
(gzip payload). Standard library only.
"""

from __future__ import annotations

import gzip
import struct
import sys
import zlib
from pathlib import Path

MAGIC = b"\x9f\xeb\x01\x00"  # BTF magic (little-endian) + version 1 + flags 0
HEADER = struct.Struct("<HBBIIIII")  # magic version flags hdr_len type_off type_len str_off str_len


def unpack_image(data: bytes) -> bytes:
    """The uncompressed kernel image inside ``data``."""
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:2] == b"MZ" and data[4:8] == b"zimg":
        # EFI zboot: payload offset and size at 8 and 12, compression name at 24.
        off, size = struct.unpack_from("<II", data, 8)
        comp = data[24:32].rstrip(b"\0").decode()
        if comp != "gzip":
            raise SystemExit(f"zboot image compressed with {comp}: only gzip is handled")
        return unpack_image(zlib.decompress(data[off : off + size], 16 + zlib.MAX_WBITS))
    return data


def find_btf(image: bytes) -> bytes:
    """The vmlinux BTF blob: the largest well-formed BTF header's extent."""
    best = b""
    i = image.find(MAGIC)
    while i >= 0:
        _m, _v, _f, hdr_len, type_off, type_len, str_off, str_len = HEADER.unpack_from(image, i)
        if hdr_len == HEADER.size and type_off == 0 and str_off == type_len:
            end = i + hdr_len + str_off + str_len
            # The string section starts with "" and ends with a NUL.
            strings = image[i + hdr_len + str_off : end]
            well_formed = strings[:1] == b"\0" and strings[-1:] == b"\0"
            if end <= len(image) and well_formed and end - i > len(best):
                best = image[i:end]
        i = image.find(MAGIC, i + 1)
    if not best:
        raise SystemExit("no BTF found in this image (built without CONFIG_DEBUG_INFO_BTF?)")
    return best


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: vmlinuz_btf.py VMLINUZ > vmlinux.btf", file=sys.stderr)
        return 2
    btf = find_btf(unpack_image(Path(sys.argv[1]).read_bytes()))
    sys.stdout.buffer.write(btf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
