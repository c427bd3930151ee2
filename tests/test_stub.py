"""The type stub names exactly what the compiled module exports."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import lsio_torch
from lsio_torch import _lsio_torch


def stub_names() -> dict[str, set[str]]:
    stub = Path(lsio_torch.__file__).with_name("_lsio_torch.pyi")
    tree = ast.parse(stub.read_text())
    names: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names[node.name] = {
                n.name for n in node.body if isinstance(n, ast.FunctionDef) and n.name != "__init__"
            }
        elif isinstance(node, ast.FunctionDef):
            names[node.name] = set()
    return names


def test_stub_matches_the_compiled_module():
    stub = stub_names()
    compiled = {n for n in dir(_lsio_torch) if not n.startswith("_")}
    assert set(stub) == compiled
    for name, members in stub.items():
        obj = getattr(_lsio_torch, name)
        if inspect.isclass(obj) and not issubclass(obj, Exception):
            public = {m for m in vars(obj) if not m.startswith("_")}
            assert members == public, name
    assert (Path(lsio_torch.__file__).with_name("py.typed")).exists()
