"""Introspection of every BPF program, map and link on the host.

``bpfscope progs``, ``maps`` (``maps dump``) and ``links``; the modules are
usable without the CLI:

* ``inventory``: ``collect_progs()``, ``collect_maps()``, ``collect_links()``
* ``stats``: ``StatsSession`` (run-time statistics for a window) and
  ``measure_cost()`` (what statistics add per program run, here)
* ``dump``: ``dump_map(id)`` decoding entries through the map's BTF
* ``types``/``decode``: a BTF type model and its value decoder
* ``links``: ``struct bpf_link_info`` decoding per link type
* ``names``: type names from the kernel's own BTF enums
* ``holders``: which processes hold which BPF objects
"""

from __future__ import annotations

__all__: list[str] = []
