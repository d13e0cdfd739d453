"""The catalog engine behind every task family (docs/design.md#tasks: one engine, one skin per family).

Contract
- A ``Catalog`` is a small set of ``Item`` s (a key = the identifier / name the agent must answer, plus one
  single-word value per attribute, plus an optional document). Full attribute tuples are unique within a
  catalog, so stating every attribute singles out one item (the *precise* prompt).
- ``build_catalog(schema, catalog_id, split, rng)`` generates a catalog around *confusable groups*: a target
  and 1-3 siblings that share the intent attribute and the attributes a vague prompt keeps, and differ in the
  dropped ones. It returns the catalog and the ``Plan`` s (target key, kept attributes) whose vague
  description matches 2-4 items, checked after the whole catalog is built (never assumed).
- ``search(catalog, query, line, k)``: rank items by (attributes whose value is a query word, query words
  found in the item's line, catalog order) and return the top-k lines that share at least one word.
- Keys are split-partitioned: a family's key maker (``schema.make_key``) only draws keys whose
  ``stable_hash_split`` is the catalog's split, so no two splits share a gold identifier or name, on top of
  using disjoint catalogs. Half the keys are ``train``; the held-out half is cut in two, ``val`` and ``test``.
- Pure Python, seeded by ``random.Random``; no global state.
"""

from __future__ import annotations

import hashlib
import random
import re
import zlib
from dataclasses import dataclass
from typing import Callable

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an the in on at of to with and or for by find fix function person expert who was born "
                  "won prize it is this that module".split())


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words (identifiers split at / . : _)."""
    return _WORD.findall(text.lower())


def stable_hash(*parts: str) -> int:
    return zlib.crc32("\x1f".join(parts).encode())


def stable_hash_split(*parts: str) -> str:
    """Which split a key belongs to: keys are partitioned so that splits never share a gold answer. The crc32
    bit that made train / test is kept (train unchanged); the held-out half is cut by a sha256 bit, not by a
    second crc32: crc32 is linear, so a crc32 of the same key with a prefix differs from it by a constant per
    key length, and the cut would follow the length of the key."""
    if stable_hash(*parts) % 2 == 0:
        return "train"
    return "val" if hashlib.sha256("\x1f".join(parts).encode()).digest()[0] & 1 else "test"


@dataclass(frozen=True)
class Item:
    key: str
    attrs: tuple[tuple[str, str], ...]  # (attribute, value) in schema order
    doc: str = ""

    def get(self, attribute: str) -> str:
        for name, value in self.attrs:
            if name == attribute:
                return value
        raise KeyError(f"item {self.key!r} has no attribute {attribute!r}")

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(v for _, v in self.attrs)


@dataclass(frozen=True)
class Catalog:
    catalog_id: str
    family: str
    items: tuple[Item, ...]

    def item(self, key: str) -> Item:
        for it in self.items:
            if it.key == key:
                return it
        raise KeyError(f"no item {key!r} in catalog {self.catalog_id}")

    def matching(self, constraints: tuple[tuple[str, str], ...]) -> tuple[Item, ...]:
        """Items whose attributes equal every (attribute, value) constraint."""
        return tuple(it for it in self.items if all(it.get(a) == v for a, v in constraints))


@dataclass(frozen=True)
class Schema:
    family: str
    intent: str  # always kept in the vague prompt (it carries the intent)
    optional: tuple[str, ...]  # attributes the vague prompt may drop
    pools: tuple[tuple[str, tuple[str, ...]], ...]  # attribute -> global value pool
    sub_pool: tuple[tuple[str, int], ...]  # attribute -> how many values one catalog uses
    make_key: Callable[[random.Random, dict, str, set], str | None]  # (rng, values, split, used) -> key
    make_doc: Callable[[str, dict], str]

    @property
    def attributes(self) -> tuple[str, ...]:
        return (self.intent,) + self.optional


@dataclass(frozen=True)
class Plan:
    target: str  # the target item's key
    kept: tuple[str, ...]  # attributes stated in the vague prompt (intent first)


def _draw_values(rng: random.Random, pools: dict, schema: Schema, fixed: dict) -> dict:
    return {a: fixed[a] if a in fixed else rng.choice(pools[a]) for a in schema.attributes}


def build_catalog(schema: Schema, catalog_id: str, split: str, rng: random.Random,
                  groups: int = 4, noise: int = 3) -> tuple[Catalog, list[Plan]]:
    full = dict(schema.pools)
    pools = {a: tuple(rng.sample(full[a], n)) for a, n in schema.sub_pool}
    items: dict[tuple, Item] = {}
    used: set[str] = set()

    def add(values: dict) -> Item | None:
        tup = tuple(values[a] for a in schema.attributes)
        if tup in items:
            return None
        key = schema.make_key(rng, values, split, used)
        if key is None:
            return None
        used.add(key)
        item = Item(key, tuple((a, values[a]) for a in schema.attributes), schema.make_doc(key, values))
        items[tup] = item
        return item

    plans = []
    for _ in range(groups):
        target = add(_draw_values(rng, pools, schema, {}))
        if target is None:
            continue
        n_kept = rng.choice((1, 1, 2))  # optional attributes kept besides the intent
        kept = (schema.intent,) + tuple(sorted(rng.sample(schema.optional, n_kept), key=schema.optional.index))
        fixed = {a: target.get(a) for a in kept}
        for _ in range(rng.choice((1, 2, 3))):  # siblings: same kept values, other dropped values
            for _attempt in range(8):
                if add(_draw_values(rng, pools, schema, fixed)) is not None:
                    break
        plans.append(Plan(target.key, kept))
    for _ in range(noise):
        add(_draw_values(rng, pools, schema, {}))
    order = list(items.values())
    rng.shuffle(order)  # else every target would come first in its group and win search ties
    catalog = Catalog(catalog_id, schema.family, tuple(order))
    valid = []
    for p in plans:
        t = catalog.item(p.target)
        if 2 <= len(catalog.matching(tuple((a, t.get(a)) for a in p.kept))) <= 4:
            valid.append(p)
    return catalog, valid


def search(catalog: Catalog, query: str, line: Callable[[Item], str], k: int = 3) -> list[str]:
    """Top-k item lines for a keyword query (deterministic; ties keep catalog order)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q = set(words(query)) - _STOP
    scored = []
    for idx, it in enumerate(catalog.items):
        text = line(it)
        attr_hits = sum(1 for v in it.values if set(words(v)) and set(words(v)) <= q)
        word_hits = len(q & set(words(text)))
        if word_hits:
            scored.append((-attr_hits, -word_hits, idx, text))
    scored.sort()
    return [s[3] for s in scored[:k]]
