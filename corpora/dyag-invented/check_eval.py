"""Checks the corpus, its Markdown sheets and eval_dev.jsonl agree: valid JSON,
one field per chunk, every expected answer the asked field's value as written."""
import json, glob, re, os, sys, unicodedata, collections
B = os.path.dirname(os.path.abspath(__file__))
errs = []
def load(p):
    out = []
    for n, l in enumerate(open(p, encoding="utf-8"), 1):
        try: out.append(json.loads(l))
        except Exception as e: errs.append(f"{p}:{n} bad JSON {e}")
    return out
chunks = load(f"{B}/corpus.jsonl"); qs = load(f"{B}/eval_dev.jsonl")
SEC = {"app_id":"Identifiant","full_name":"Nom complet","status":"Statut","geographic_scope":"Portée géographique",
       "business_domains":"Domaines métier","description":"Description","actors":"Acteurs","contacts":"Contacts",
       "websites":"Sites web","events":"Mise en production","related_data":"Données liées","related_apps":"Applications liées"}
docs = collections.defaultdict(dict); names = {}; idx = collections.defaultdict(list)
for c in chunks:
    assert set(c) == {"id","content","metadata"} and set(c["metadata"]) == {"id","nom"}, c
    aid, nom = c["metadata"]["id"], c["metadata"]["nom"]
    m = re.fullmatch(r"Application: (.+)\n([^:\n]+): (.+)", c["content"], re.S)
    if not m or m.group(1) != nom: errs.append(f"bad content {c['id']}"); continue
    lab, val = m.group(2), m.group(3)
    if lab not in SEC.values(): errs.append(f"unknown label {lab}")
    if lab in docs[aid]: errs.append(f"dup label {aid} {lab}")
    docs[aid][lab] = val; names[aid] = nom
    mm = re.fullmatch(r"chunk_(\d+)_(\d+)", c["id"])
    if not mm or mm.group(1) != aid: errs.append(f"bad chunk id {c['id']}")
    idx[aid].append(int(mm.group(2)))
for aid, l in idx.items():
    if l != list(range(len(l))): errs.append(f"non-contiguous chunk index {aid}")
    if docs[aid].get("Identifiant") != aid: errs.append(f"Identifiant mismatch {aid}")
# markdown
mdfiles = sorted(glob.glob(f"{B}/corpus_md/*.md"))
if len(mdfiles) != len(docs): errs.append("md count mismatch")
for aid, nom in names.items():
    fn = unicodedata.normalize("NFKD", nom).encode("ascii","ignore").decode() + ".md"
    p = f"{B}/corpus_md/{fn}"
    if not os.path.exists(p): errs.append(f"missing md {fn}"); continue
    t = open(p, encoding="utf-8").read()
    parts = t.split("\n## ")
    if parts[0] != f"# {nom}\n": errs.append(f"md title {fn}")
    md = {}
    for sct in parts[1:]:
        lab, _, val = sct.partition("\n\n"); md[lab] = val.rstrip("\n")
    if list(md) != list(docs[aid]) or md != docs[aid]: errs.append(f"md differs {fn}")
# questions
keys = ["id","question","expected_answer","category","difficulty","app_name","app_id","source_section"]
seen = set(); cats = collections.Counter(); diffs = collections.Counter()
for q in qs:
    if list(q) != keys: errs.append(f"keys {q['id']}")
    if q["id"] in seen: errs.append(f"dup id {q['id']}")
    seen.add(q["id"])
    aid = q["app_id"]
    if names.get(aid) != q["app_name"]: errs.append(f"app mismatch {q['id']}")
    if q["source_section"] != q["category"]: errs.append(f"section {q['id']}")
    lab = SEC.get(q["category"])
    if docs[aid].get(lab) != q["expected_answer"]: errs.append(f"answer mismatch {q['id']}")
    if q["difficulty"] not in ("easy","medium","hard"): errs.append(f"difficulty {q['id']}")
    cats[q["category"]] += 1; diffs[q["difficulty"]] += 1
dupq = [k for k, v in collections.Counter(q["question"] for q in qs).items() if v > 1]
if dupq: errs.append(f"duplicate questions {dupq}")
# fields never asked
asked = {(q["app_id"], SEC[q["category"]]) for q in qs}
unasked = [(names[a], l) for a in docs for l in docs[a] if (a, l) not in asked]
print("errors:", errs or "none")
print("apps", len(docs), "chunks", len(chunks), "md", len(mdfiles), "questions", len(qs))
print("per category", dict(cats)); print("per difficulty", dict(diffs))
print("fields per app", {names[a]: len(d) for a, d in docs.items()})
print("fields never asked:", unasked)
sys.exit(1 if errs else 0)
