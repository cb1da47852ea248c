# -*- coding: utf-8 -*-
"""Vérifie corpus.jsonl, corpus_md/, eval_dev.jsonl, eval_test.jsonl et eval_dev2.jsonl (ne lit que ces fichiers)."""
import json, os, re, sys
from collections import Counter, OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
LABELS = ["Identifiant", "Nom complet", "Statut", "Portée géographique",
          "Domaines métier", "Description", "Acteurs", "Contacts", "Sites web",
          "Mise en production", "Données liées", "Applications liées"]
CAT2LABEL = {
    "app_id": "Identifiant", "full_name": "Nom complet", "status": "Statut",
    "geographic_scope": "Portée géographique", "business_domains": "Domaines métier",
    "description": "Description", "actors": "Acteurs", "contacts": "Contacts",
    "websites": "Sites web", "events": "Mise en production",
    "related_data": "Données liées", "related_applications": "Applications liées",
}
errors = []
def err(msg):
    errors.append(msg)

def load_jsonl(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                err(f"{path}:{i}: ligne vide")
                continue
            try:
                out.append((i, json.loads(line)))
            except json.JSONDecodeError as e:
                err(f"{path}:{i}: JSON invalide ({e})")
    return out

# ---- corpus.jsonl ----
docs = OrderedDict()       # id -> {"nom": ..., "fields": OrderedDict(label->value)}
label_re = re.compile(r"^(" + "|".join(map(re.escape, LABELS)) + r"): (\S.*)$")
for i, rec in load_jsonl(os.path.join(HERE, "corpus.jsonl")):
    where = f"corpus.jsonl:{i}"
    if set(rec) != {"id", "content", "metadata"} or set(rec.get("metadata", {})) != {"id", "nom"}:
        err(f"{where}: clés inattendues {rec.keys()}"); continue
    mid, nom = rec["metadata"]["id"], rec["metadata"]["nom"]
    if not re.fullmatch(r"\d+", mid):
        err(f"{where}: metadata.id non numérique: {mid!r}")
    lines = rec["content"].split("\n")
    if len(lines) != 2:
        err(f"{where}: {len(lines)} lignes au lieu de 2"); continue
    if lines[0] != f"Application: {nom}":
        err(f"{where}: première ligne {lines[0]!r}")
    m = label_re.match(lines[1])
    if not m:
        err(f"{where}: ligne 'Label: valeur' invalide: {lines[1]!r}"); continue
    lab, val = m.group(1), m.group(2)
    if val != val.strip():
        err(f"{where}: espaces en trop dans la valeur")
    d = docs.setdefault(mid, {"nom": nom, "fields": OrderedDict()})
    if d["nom"] != nom:
        err(f"{where}: nom incohérent pour {mid}")
    if lab in d["fields"]:
        err(f"{where}: champ {lab} en double")
    expected_chunk = f"chunk_{mid}_{len(d['fields'])}"
    if rec["id"] != expected_chunk:
        err(f"{where}: id de chunk {rec['id']!r}, attendu {expected_chunk!r}")
    d["fields"][lab] = val

names = Counter(d["nom"] for d in docs.values())
for n, k in names.items():
    if k > 1:
        err(f"nom court {n} utilisé par {k} applications")
for mid, d in docs.items():
    f = d["fields"]
    if f.get("Identifiant") != mid:
        err(f"{mid}: Identifiant {f.get('Identifiant')!r} différent de metadata.id")
    order = [l for l in LABELS if l in f]
    if list(f) != order:
        err(f"{mid}: champs dans le désordre {list(f)}")
    missing = [l for l in LABELS if l not in f]
    if not 1 <= len(missing) <= 3:
        err(f"{mid}: {len(missing)} champs absents (attendu 1 à 3)")
    if "Applications liées" in f:
        for other in f["Applications liées"].split(", "):
            if other not in names:
                err(f"{mid}: application liée inconnue {other!r}")

# ---- corpus_md ----
md_dir = os.path.join(HERE, "corpus_md")
seen = set()
by_nom = {d["nom"]: mid for mid, d in docs.items()}
for fn in sorted(os.listdir(md_dir)):
    where = f"corpus_md/{fn}"
    if not fn.endswith(".md") or not fn.isascii():
        err(f"{where}: nom de fichier non ASCII ou sans .md")
    with open(os.path.join(md_dir, fn), encoding="utf-8") as fh:
        text = fh.read()
    blocks = text.split("\n\n")
    if blocks[-1] != "":
        err(f"{where}: le fichier doit finir par une ligne vide")
    blocks = blocks[:-1]
    if not blocks or not blocks[0].startswith("# ") or "\n" in blocks[0]:
        err(f"{where}: titre invalide"); continue
    title = blocks[0][2:]
    if title not in by_nom:
        err(f"{where}: application {title!r} absente de corpus.jsonl"); continue
    if title in seen:
        err(f"{where}: fiche en double")
    seen.add(title)
    rest = blocks[1:]
    if len(rest) % 2:
        err(f"{where}: nombre de blocs impair"); continue
    md_fields = OrderedDict()
    for h, v in zip(rest[0::2], rest[1::2]):
        if not h.startswith("## ") or "\n" in v:
            err(f"{where}: bloc invalide {h!r}"); continue
        md_fields[h[3:]] = v
    if list(md_fields.items()) != list(docs[by_nom[title]]["fields"].items()):
        err(f"{where}: champs/valeurs différents de corpus.jsonl")
for n in by_nom:
    if n not in seen:
        err(f"pas de fiche Markdown pour {n}")

# ---- eval_dev.jsonl, eval_test.jsonl, eval_dev2.jsonl ----
KEYS = {"id", "question", "expected_answer", "category", "difficulty",
        "app_name", "app_id", "source_section"}
cats, per_app, qids, qtexts = Counter(), Counter(), set(), set()
for half, i, q in [(h, i, q) for h in ("eval_dev.jsonl", "eval_test.jsonl", "eval_dev2.jsonl") for i, q in load_jsonl(os.path.join(HERE, h))]:
    where = f"{half}:{i} ({q.get('id')})"
    if set(q) != KEYS:
        err(f"{where}: clés {sorted(q)}"); continue
    if q["id"] in qids:
        err(f"{where}: id en double")
    qids.add(q["id"])
    if q["question"].strip().lower() in qtexts:
        err(f"{where}: question en double")
    qtexts.add(q["question"].strip().lower())
    if q["difficulty"] not in ("easy", "medium", "hard"):
        err(f"{where}: difficulté {q['difficulty']!r}")
    if q["source_section"] != q["category"]:
        err(f"{where}: source_section différent de category")
    cat = q["category"]
    cats[cat] += 1
    if cat == "unanswerable":
        if q["expected_answer"] != "Je ne sais pas":
            err(f"{where}: réponse attendue {q['expected_answer']!r}")
        if q["app_id"]:
            d = docs.get(q["app_id"])
            if not d or d["nom"] != q["app_name"]:
                err(f"{where}: app inconnue {q['app_id']}/{q['app_name']}")
            per_app[q["app_name"]] += 1
        elif q["app_name"]:
            err(f"{where}: app_name sans app_id")
        continue
    if cat not in CAT2LABEL:
        err(f"{where}: catégorie inconnue {cat!r}"); continue
    d = docs.get(q["app_id"])
    if d is None:
        err(f"{where}: app_id {q['app_id']!r} absent du corpus"); continue
    if d["nom"] != q["app_name"]:
        err(f"{where}: app_name {q['app_name']!r} != {d['nom']!r}")
    lab = CAT2LABEL[cat]
    if lab not in d["fields"]:
        err(f"{where}: {q['app_name']} n'a pas de champ {lab}")
    elif d["fields"][lab] != q["expected_answer"]:
        err(f"{where}: réponse attendue différente de la valeur {lab}")
    per_app[q["app_name"]] += 1

print(f"{len(docs)} applications:", ", ".join(f"{m} {d['nom']}" for m, d in docs.items()))
print(f"{sum(cats.values())} questions:", dict(cats.most_common()))
print("questions par application:", dict(per_app.most_common()))
if errors:
    print(f"\n{len(errors)} ERREUR(S):")
    for e in errors:
        print(" -", e)
    sys.exit(1)
print("OK")
