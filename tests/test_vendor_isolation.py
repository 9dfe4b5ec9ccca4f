"""Vendor APIs live in backends/ and per-backend kernel files only (DEVELOPERS.md, STYLE.md rule 4)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENDOR = re.compile(r'torch\.cuda\b|torch_npu|"nccl"|"hccl"|\'nccl\'|\'hccl\'|\.cuda\(|\.npu\(')
PER_BACKEND_KERNEL = re.compile(r"(cuda|triton|ascend|npu|flex)[^/]*\.py$")


def _scanned_files():
    for top in ("engine", "recipes", "kernels"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if top == "kernels" and PER_BACKEND_KERNEL.search(path.name):
                continue
            yield path


def test_no_vendor_api_outside_backends():
    hits = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
            for p in _scanned_files()
            for n, line in enumerate(p.read_text().splitlines(), 1) if VENDOR.search(line)]
    assert not hits, "vendor APIs outside backends/:\n" + "\n".join(hits)


def test_the_scan_sees_the_engine():
    assert any(p.name == "controller.py" for p in _scanned_files())
