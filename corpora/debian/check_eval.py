"""Validate corpus.jsonl and eval_dev/test/fresh/fresh2/fresh3/fresh4.jsonl; print counts by kind and by field."""
import json, re
from collections import Counter, defaultdict

LABELS = {"Version", "Section", "Priority", "Maintainer", "Architecture",
          "Installed-Size", "Depends", "Homepage", "Description"}
KINDS = {"paraphrase", "informal", "typo", "alias", "unanswerable"}
problems = []
chunks = defaultdict(list)
ids = set()
for i, line in enumerate(open("corpus.jsonl", encoding="utf-8"), 1):
    o = json.loads(line)
    pkg = o["metadata"]["id"]
    lines = o["content"].split("\n")
    if o["id"] in ids: problems.append(f"corpus {i}: duplicate id")
    ids.add(o["id"])
    if len(lines) != 2 or lines[0] != f"Package: {pkg}" or o["metadata"]["nom"] != pkg:
        problems.append(f"corpus {i}: bad layout")
    m = re.match(r"^([A-Za-z-]+): (.+)$", lines[1])
    if not m or m.group(1) not in LABELS: problems.append(f"corpus {i}: bad field line")
    if o["id"] != f"chunk_{pkg}_{len(chunks[pkg])}": problems.append(f"corpus {i}: bad chunk number")
    chunks[pkg].append(o["content"])

HALVES = ("dev", "test", "fresh", "fresh2", "fresh3", "fresh4")
by_kind, by_field, seen_q = Counter(), Counter(), set()
for i, line in enumerate((l for h in HALVES for l in open(f"eval_{h}.jsonl", encoding="utf-8")), 1):
    try:
        o = json.loads(line)
    except Exception as e:
        problems.append(f"eval {i}: parse error {e}"); continue
    q, a, md = o["question"], o["expected_answer"], o["metadata"]
    kind, doc, field = md["kind"], md["doc_id"], md["field"]
    by_kind[kind] += 1; by_field[str(field)] += 1
    if q.lower() in seen_q: problems.append(f"eval {i}: duplicate question")
    seen_q.add(q.lower())
    if kind not in KINDS: problems.append(f"eval {i}: bad kind {kind}")
    if doc is not None and doc not in chunks: problems.append(f"eval {i}: unknown doc_id {doc}")
    if kind == "unanswerable":
        if a != "I don't know" or field is not None: problems.append(f"eval {i}: bad unanswerable")
        if doc is not None and field is None:
            pass
        continue
    if field not in LABELS: problems.append(f"eval {i}: bad field {field}")
    hit = [c for c in chunks.get(doc, []) if c.split("\n")[1].startswith(field + ": ")]
    if not hit:
        problems.append(f"eval {i}: {doc} has no {field} chunk")
    elif field == "Description":
        if a not in hit[0]: problems.append(f"eval {i}: answer not in description")
    elif hit[0].split("\n")[1] != f"{field}: {a}":
        problems.append(f"eval {i}: answer differs from field value")

print("corpus chunks:", sum(map(len, chunks.values())), "packages:", len(chunks))
print("eval questions:", sum(by_kind.values()))
print("by kind:", dict(by_kind))
print("by field:", dict(by_field))
print("packages not asked about:", sorted(set(chunks) - {json.loads(l)["metadata"]["doc_id"] for h in HALVES for l in open(f"eval_{h}.jsonl")}))
print("problems:", problems or "none")
