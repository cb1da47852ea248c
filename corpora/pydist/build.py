#!/usr/bin/env python3
"""Build corpus_md/ from the installed distributions' real metadata.

Run with the interpreter whose site-packages you want to read, e.g.:
    /root/.pyenv/versions/3.11.7/bin/python3 build.py
"""
import importlib.metadata as im
import re
import sys
from pathlib import Path

DISTS = [
    "numpy", "scipy", "requests", "click", "PyYAML", "Jinja2", "urllib3",
    "certifi", "idna", "packaging", "setuptools", "pip", "six", "attrs",
    "pydantic", "Flask", "Werkzeug", "MarkupSafe", "pytest", "boto3",
    "botocore", "cryptography", "sympy", "networkx", "Pygments",
    "python-dateutil", "jsonschema", "ipython", "docutils", "hypothesis",
]

OUT = Path(__file__).resolve().parent / "corpus_md"
NAME_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def clean(v):
    """Trim whitespace; a value that spans lines is joined with single spaces."""
    if v is None:
        return None
    v = " ".join(part.strip() for part in str(v).strip().splitlines() if part.strip())
    return v or None


def project_urls(md):
    urls = {}
    for entry in md.get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        urls.setdefault(label.strip().lower(), url.strip())
    return urls


def homepage(md):
    hp = clean(md.get("Home-page"))
    if hp and hp.upper() != "UNKNOWN":
        return hp
    urls = project_urls(md)
    for key in ("homepage", "source", "documentation"):
        if urls.get(key):
            return urls[key]
    return None


def license_of(md):
    lic = md.get("License")
    if lic and "\n" not in lic.strip() and len(lic.strip()) < 80 and lic.strip().upper() != "UNKNOWN":
        return lic.strip()
    expr = clean(md.get("License-Expression"))
    if expr:
        return expr
    names = [c.split("::")[-1].strip() for c in (md.get_all("Classifier") or [])
             if c.startswith("License ::")]
    return ", ".join(names) or None


def dependencies(md):
    names = []
    for req in md.get_all("Requires-Dist") or []:
        marker = req.partition(";")[2]
        if re.search(r"\bextra\s*==", marker):
            continue
        m = NAME_RE.match(req)
        if m and m.group(1) not in names:
            names.append(m.group(1))
    return ", ".join(names) or None


def record(dist):
    md = dist.metadata
    fields = [("Version", clean(md.get("Version"))),
              ("Summary", clean(md.get("Summary")))]
    if clean(md.get("Author")):
        fields.append(("Author", clean(md.get("Author"))))
    elif clean(md.get("Author-email")):
        fields.append(("Author-email", clean(md.get("Author-email"))))
    if clean(md.get("Maintainer")):
        fields.append(("Maintainer", clean(md.get("Maintainer"))))
    elif clean(md.get("Maintainer-email")):
        fields.append(("Maintainer-email", clean(md.get("Maintainer-email"))))
    fields += [("License", license_of(md)),
               ("Requires-Python", clean(md.get("Requires-Python"))),
               ("Homepage", homepage(md)),
               ("Dependencies", dependencies(md))]
    lines = [f"# {md['Name']}", ""]
    lines += [f"- **{k}**: {v}" for k, v in fields if v]
    return "\n".join(lines) + "\n"


LARGE = Path(__file__).resolve().parent / "corpus_large_md"
# Eval questions ask about these as distributions the corpus lacks.
ABSENT = {"django", "tqdm"}


def add_installed():
    """--large: corpus_md's records, plus every other distribution the running
    interpreter has, into corpus_large_md/ (run it with several interpreters
    to add theirs); a record already there is kept."""
    import shutil

    LARGE.mkdir(exist_ok=True)
    for path in OUT.glob("*.md"):
        if not (LARGE / path.name).exists():
            shutil.copy(path, LARGE / path.name)
    for dist in im.distributions():
        name = (dist.metadata["Name"] or "").lower()
        path = LARGE / f"{name}.md"
        if name and name not in ABSENT and not path.exists():
            path.write_text(record(dist), encoding="utf-8")
    print(f"{len(list(LARGE.glob('*.md')))} records in {LARGE}", file=sys.stderr)


def main():
    if "--large" in sys.argv[1:]:
        return add_installed()
    OUT.mkdir(exist_ok=True)
    for name in DISTS:
        dist = im.distribution(name)
        path = OUT / f"{dist.metadata['Name'].lower()}.md"
        path.write_text(record(dist), encoding="utf-8")
        print(f"{path.name}: {dist.metadata['Version']}")
    print(f"python: {sys.executable}", file=sys.stderr)


if __name__ == "__main__":
    main()
