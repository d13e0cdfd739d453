"""Task generation (ambiguity guarantees, splits), search, scoring and the JSONL round trip."""

import json

import pytest

from ppp_min.userville.families.funcloc import parse_identifiers, set_f1
from ppp_min.userville.families.registry import FAMILIES
from ppp_min.userville.protocol import MAX_KEYWORDS, parse_user_task
from ppp_min.userville.tasks import (TaskFileError, export_jsonl, import_jsonl, make_tasks, score, search,
    task_to_json)

BUILTIN = tuple(FAMILIES)  # funcloc, research (a test may register more while it runs)


def _prompt_matches(task, kept):
    """Catalog items whose own attributes would render to the same request text (a textual check)."""
    attrs = kept or FAMILIES[task.family].schema.attributes
    text = task.vague_prompt if kept else task.precise_prompt
    return [it.key for it in task.catalog.items if FAMILIES[task.family].prompt(dict(it.attrs), attrs) == text]


@pytest.mark.parametrize("family", BUILTIN)
def test_vague_is_ambiguous_and_precise_is_unique_over_many_seeds(family):
    for seed in range(25):
        for split in ("train", "val", "test"):
            for t in make_tasks(family, split, 12, seed):
                vague = _prompt_matches(t, t.kept)
                assert 2 <= len(vague) <= 4 and t.gold[0] in vague, t.task_id
                assert _prompt_matches(t, ()) == list(t.gold), t.task_id
                assert t.vague_prompt != t.precise_prompt and len(t.vague_prompt.split()) <= 20


@pytest.mark.parametrize("family", BUILTIN)
def test_deterministic_and_seeded(family):
    a, b = make_tasks(family, "train", 30, 7), make_tasks(family, "train", 30, 7)
    assert a == b and len(a) == 30 and len({t.task_id for t in a}) == 30
    assert [t.precise_prompt for t in a] != [t.precise_prompt for t in make_tasks(family, "train", 30, 8)]
    assert make_tasks(family, "train", 10, 7) == a[:10]


@pytest.mark.parametrize("family", BUILTIN)
def test_splits_are_disjoint(family):
    tasks = {s: make_tasks(family, s, 300, 0) for s in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not {t.catalog_id for t in tasks[a]} & {t.catalog_id for t in tasks[b]}, (a, b)
        keys_a = {it.key for t in tasks[a] for it in t.catalog.items}  # every catalog item, not only the gold
        keys_b = {it.key for t in tasks[b] for it in t.catalog.items}
        assert not keys_a & keys_b, (a, b)
        assert not {t.task_id for t in tasks[a]} & {t.task_id for t in tasks[b]}, (a, b)
    assert all({t.split for t in ts} == {s} for s, ts in tasks.items())
    # other seeds draw other tasks of the same split, never another split's keys
    assert not {g for t in make_tasks(family, "val", 100, 5) for g in t.gold} & \
        {it.key for t in tasks["test"] + tasks["train"] for it in t.catalog.items}


def test_key_partition_halves_train_and_cuts_the_held_out_half_evenly():
    from collections import Counter
    from ppp_min.userville.catalog import stable_hash_split
    from ppp_min.userville.families.funcloc import AREAS, OBJECTS, VERBS
    from ppp_min.userville.families.research import FIRST, LAST
    funcs = Counter(stable_hash_split(a, v, o) for a in AREAS for o in OBJECTS for v in VERBS)
    names = Counter(stable_hash_split(f"{a} {b}") for a in FIRST for b in LAST)
    for c in (funcs, names):
        n = sum(c.values())
        assert 0.45 < c["train"] / n < 0.55 and 0.4 < c["val"] / (c["val"] + c["test"]) < 0.6, c
    # the cut does not follow the key's length (a second crc32 of the same key would: crc32 is linear)
    by_len = {}
    for a in AREAS:
        for o in OBJECTS:
            for v in VERBS:
                s = stable_hash_split(a, v, o)
                if s != "train":
                    by_len.setdefault(len(a + v + o), set()).add(s)
    assert sum(len(v) == 2 for v in by_len.values()) >= len(by_len) // 2


def test_train_split_is_unchanged_by_the_val_split():
    """The train tasks are those of the two-split code (fingerprint taken before val was cut out of test)."""
    import hashlib
    for family, want in (("funcloc", "678a864471c1c394"), ("research", "7848df1bf1a5a00b")):
        ts = make_tasks(family, "train", 200, 0) + make_tasks(family, "train", 50, 3)
        got = hashlib.sha256(json.dumps([task_to_json(t) for t in ts], sort_keys=True).encode()).hexdigest()
        assert got[:16] == want, family


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown family"):
        make_tasks("swe", "train", 1)
    with pytest.raises(ValueError, match="unknown split"):
        make_tasks("funcloc", "dev", 1)


@pytest.mark.parametrize("family", BUILTIN)
def test_facts_follow_the_tier_ladder(family):
    for t in make_tasks(family, "train", 40, 3):
        parse_user_task(json.loads(json.dumps(t.user.to_json())), FAMILIES)  # valid protocol input
        dropped = [a for a in FAMILIES[family].schema.optional if a not in t.kept]
        assert len(t.user.facts_of(1)) == len(dropped) >= 1
        assert all(len(f.keywords) <= MAX_KEYWORDS for f in t.user.facts)
        gold_item = t.catalog.item(t.gold[0])
        for f, a in zip(t.user.facts_of(1), dropped):
            assert gold_item.get(a) in f.text and gold_item.get(a).lower() in f.keywords
        if family == "funcloc":
            assert [len(t.user.facts_of(k)) for k in (2, 3, 4, 5)] == [1, 0, 1, 1]
            assert t.user.facts_of(5)[0].text.endswith(t.gold[0] + ".")
            assert t.gold[0].split(":")[0] in t.user.facts_of(4)[0].text
        else:
            assert [len(t.user.facts_of(k)) for k in (2, 3)] == [0, 1]
            assert t.gold[0] in t.user.facts_of(3)[0].text


@pytest.mark.parametrize("family", BUILTIN)
def test_search_finds_gold_with_precise_words_and_candidates_with_vague(family):
    tasks = make_tasks(family, "train", 60, 1)
    gold_first_on_vague = 0
    for t in tasks:
        hits = search(t, t.precise_prompt)
        assert hits[0].startswith(t.gold[0] + ":") and len(hits) == 3
        vague_hits = search(t, t.vague_prompt, k=5)
        candidates = {it.key for it in t.catalog.items
                      if all(it.get(a) == t.catalog.item(t.gold[0]).get(a) for a in t.kept)}
        top = [h.split(": ")[0] for h in vague_hits[:len(candidates)]]
        assert set(top) == candidates  # every vague match ranks above every non-match
        gold_first_on_vague += top[0] == t.gold[0]
    assert gold_first_on_vague < 0.7 * len(tasks)  # the vague prompt does not give the answer away
    t = tasks[0]
    assert search(t, "zzz qqq") == [] and len(search(t, t.precise_prompt, k=1)) == 1
    with pytest.raises(ValueError, match="k must be"):
        search(t, "x", k=0)


def test_search_lines_show_identifier_and_attributes():
    t = make_tasks("funcloc", "train", 1, 0)[0]
    line = search(t, t.precise_prompt, k=1)[0]
    assert line.startswith(t.gold[0] + ": ") and all(v in line for v in t.catalog.item(t.gold[0]).values)


def test_funcloc_score_is_set_f1_over_parsed_identifiers():
    t = make_tasks("funcloc", "train", 1, 0)[0]
    g = t.gold[0]
    assert score(t, f"The function is {g}.") == 1.0
    assert score(t, f"/testbed/{g}\nother/x.py:foo") == pytest.approx(2 / 3)
    assert score(t, f"{g}, a/b.py:c, d/e.py:f") == pytest.approx(0.5)
    assert score(t, "I don't know") == 0.0
    assert set_f1(set(), set()) == 1.0 and set_f1({"a"}, set()) == 0.0
    assert parse_identifiers("see ./pkg/m.py:Cls.meth and /workspace/a.py:f.") == {"pkg/m.py:Cls.meth", "a.py:f"}


def test_research_score_is_normalised_exact_match():
    t = make_tasks("research", "train", 1, 0)[0]
    g = t.gold[0]
    assert score(t, g) == 1.0 and score(t, f"  {g.upper()}. ") == 1.0
    assert score(t, f"It is {g}") == 0.0 and score(t, g.split()[0]) == 0.0


def test_jsonl_round_trip_is_exact_and_search_still_works(tmp_path):
    tasks = make_tasks("funcloc", "train", 6, 2) + make_tasks("research", "test", 6, 2)
    path = tmp_path / "tasks.jsonl"
    export_jsonl(tasks, path)
    back = import_jsonl(path)
    assert back == tasks
    assert [search(t, t.precise_prompt) for t in back] == [search(t, t.precise_prompt) for t in tasks]


def _bad_file(tmp_path, mutate):
    rows = [task_to_json(t) for t in make_tasks("research", "train", 3, 0)]
    mutate(rows[1])
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r.pop("gold"), "gold"),
    (lambda r: r.update(vague_prompt=3), "vague_prompt"),
    (lambda r: r.update(family="chess"), "family"),
    (lambda r: r["user"]["facts"][0].update(tier=9), "user.facts[0].tier"),
    (lambda r: r.update(family="funcloc"), "user.family"),
    (lambda r: r["catalog"][2].update(attrs=[["city"]]), "catalog[2].attrs"),
    (lambda r: r["catalog"][0].pop("key"), "catalog[0].key"),
])
def test_bad_line_names_line_and_field(tmp_path, mutate, field):
    with pytest.raises(TaskFileError) as e:
        import_jsonl(_bad_file(tmp_path, mutate))
    assert (e.value.line, e.value.field) == (2, field) and str(e.value).startswith(f"line 2: {field}: ")


def test_bad_json_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text("\n{not json\n")
    with pytest.raises(TaskFileError, match=r"line 2: \(line\): not valid JSON"):
        import_jsonl(p)
