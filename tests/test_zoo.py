"""The model zoo (tests/zoo.py): coverage of the mirror's rules and its verdicts on real-world-style models."""

import functools

import pytest
import torch
from zoo import AUTOCAST, ZOO, build

import autogradlens as lens
from autogradlens.mirror.table import NO_RULE


@functools.cache  # the coverage test and the per-model tests read the same reports (one file, one worker)
def _mirror(name, variant):
    loss, params = build(name, variant)
    return lens.mirror(loss, params=params, mode="tensor")


def _bad(rep):
    return [(r["id"], r["status"], r.get("e2e_status"), r["max_rel"]) for r in rep.rows
            if r["status"] == "mismatch" or r.get("e2e_status") == "mismatch"]


def test_at_least_98_percent_of_op_nodes_are_checked_and_the_rest_have_a_reason():
    ops = unchecked = 0
    types = set()
    for name in ZOO:
        for variant in ("float64", "float32") + (("autocast",) if name in AUTOCAST else ()):
            rows = [r for r in _mirror(name, variant).rows if r["kind"] == "node"]
            ops += len(rows)
            unchecked += sum(r["status"] == "unmirrored" for r in rows)
            types |= {r["type"] for r in rows if r["status"] == "unmirrored"}
    assert ops > 1000
    assert unchecked / ops <= 0.02, (unchecked, ops, types)
    assert types <= set(NO_RULE), types - set(NO_RULE)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_zoo_model_mirrors_in_float64_without_mismatch(name):
    rep = _mirror(name, "float64")
    assert not _bad(rep), rep.to_text()
    assert rep.ok and set(rep.unmirrored) <= set(NO_RULE)
    leaves = [r for r in rep.rows if r["kind"] == "leaf"]
    assert leaves and all(r["status"] == "match" for r in leaves)


@pytest.mark.parametrize("variant", ["float32", "bfloat16", "float16", "autocast"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_no_false_mismatch_in_low_precision(name, variant):
    """Rounding in float32, bfloat16, float16 and bf16 autocast is not a mismatch (needs the mirror's bound)."""
    rep = _mirror(name, variant)
    assert not _bad(rep), rep.to_text()


def test_zoo_builds_are_deterministic():
    a, _ = build("gpt")
    b, _ = build("gpt")
    assert torch.equal(a, b)
