"""The fuzz test's inputs: seed arrays written by zarr-python 3, and mutations of them.

A case is a pure function of ``(fuzz seed, case index)`` and the seed arrays: the seed array
it mutates, a *spec* (a JSON-able dict that says exactly which bytes or metadata fields are
changed and how), and the crops read from the result. ``apply_spec`` turns a spec and a copy
of the seed array into the mutated store, so a spec is also a regression case: see
``regressions.py``, run by ``test_fuzz.py``.

Mutations cover the metadata (every numeric field set to boundary values, keys deleted,
strings and types changed, broken JSON), shard indexes (offsets and lengths set to boundary
values, entries swapped or copied, the index's crc32c recomputed so that the bounds checks
behind it are reached) and chunk payloads (bit flips, truncation, insertion, header words set
to boundary values, files emptied, deleted, swapped or taken from another array; the chunk's
own crc32c recomputed where the codecs end with one).

The modules, in pipeline order:
    seeds        the seed arrays, written by zarr-python, and their layouts (``Seed``)
    formats      JSON documents by path, shard indexes and inner chunks, crc32c
    mutations    drawing specs: boundary values, metadata, index, payload and file edits
    apply        applying a spec to a copy of a seed array
    cases        ``Case`` and ``CaseGenerator``: a spec and crops for each (seed, index)
    regressions  inputs once found failing, each run by ``test_fuzz_regression``
"""
