"""Build corpus.jsonl from installed Debian package records (dpkg -s), one field per chunk."""
import json, re, subprocess, sys

PACKAGES = """coreutils grep sed tar gzip xz-utils zstd curl wget openssl openssh-client
git bash perl python3 make gcc zlib1g libc6 tzdata ca-certificates procps findutils
less jq tmux vim sqlite3 strace adduser""".split()
LABELS = ["Version", "Section", "Priority", "Maintainer", "Architecture",
          "Installed-Size", "Depends", "Homepage", "Description"]

def parse(text):
    fields, cur = {}, None
    for line in text.splitlines():
        if line.startswith((" ", "\t")) and cur:
            fields[cur] += "\n" + line
        elif ":" in line:
            cur, val = line.split(":", 1)
            fields[cur] = val.strip()
    return fields

def description(raw):
    lines = raw.split("\n")
    synopsis = lines[0].strip()
    para = []
    for l in lines[1:]:
        s = l.strip()
        if s == ".":
            if para:
                break
            continue
        para.append(s)
    body = re.sub(r"\s+", " ", " ".join(para)).strip()
    text = (synopsis + " " + body).strip()
    if len(text) > 400:
        sents = re.split(r"(?<=[.!?])\s+", body)
        out = synopsis
        for s in sents:
            if len(out) + 1 + len(s) > 400 and out != synopsis:
                break
            out += " " + s
        text = out
    return text

# `--all`: every installed package, into corpus_large.jsonl (retrieval among
# hundreds of documents); postgresql stays out, an eval question asks about
# it as a package the corpus lacks.
OUTPUT = "corpus.jsonl"
if "--all" in sys.argv[1:]:
    listed = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\\n"], capture_output=True, text=True, check=True).stdout
    PACKAGES = sorted(set(PACKAGES) | set(listed.split()) - {"postgresql"})
    OUTPUT = "corpus_large.jsonl"

with open(OUTPUT, "w", encoding="utf-8") as f:
    for pkg in PACKAGES:
        rec = parse(subprocess.run(["dpkg", "-s", pkg], capture_output=True, text=True, check=True).stdout)
        n = 0
        for lab in LABELS:
            if lab not in rec:
                continue
            val = description(rec[lab]) if lab == "Description" else rec[lab].strip()
            obj = {"id": f"chunk_{pkg}_{n}", "content": f"Package: {pkg}\n{lab}: {val}",
                   "metadata": {"id": pkg, "nom": pkg}}
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            n += 1
