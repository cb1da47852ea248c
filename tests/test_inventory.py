"""What the platform understands of a corpus, whatever its layout and language:
fields parsed from any layout, documents of several chunks, the corpus profile
(fields, aliases, language, worked example), generation from it, and the whole
pipeline on dyag's original formats (tests/samples)."""

import json

import pytest
from click.testing import CliRunner

from conftest import SAMPLES, FixedRetriever, write_jsonl
from dyag_mlops.cli import main
from dyag_mlops.config import GenerateConfig
from dyag_mlops.data.corpus import Chunk, load_corpus
from dyag_mlops.train import generate
from dyag_mlops.data.inventory import (
    build_profile,
    cached_schema,
    detect_schema,
    documents,
    field_questions,
    load_schema,
    parse_fields,
    plain_text,
    render_sheet,
    resolve_schema,
    shared_values,
    value_kind,
)
from dyag_mlops.data.text import normalise

def read(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def facts_by_title(docs):
    """{document title: [(label, value), ...]} in corpus order."""
    return {d.title: list(d.fields) for d in docs}


# ---------------------------------------------------------------- layouts


FACTS = [
    ("Statut", "En production"),
    ("Hébergement", "Datacenter Nantes-Est"),
    ("Site web", "https://orbis.exemple.fr/reserver"),  # a colon inside the value
    ("Contacts", "MARTIN Julie <julie.martin@exemple.fr> : <julie.martin@exemple.fr>"),  # " : " inside it
    ("Données liées", "Cadastre, Fichiers fonciers"),
]
LAYOUTS = {
    "Label: value": "\n".join(f"{label}: {value}" for label, value in FACTS),
    "Label : value": "\n".join(f"{label} : {value}" for label, value in FACTS),
    "- **Label**: value": "\n".join(f"- **{label}**: {value}" for label, value in FACTS),
    "**Label** : value": "\n".join(f"**{label}** : {value}" for label, value in FACTS),
    "## Label headings": "# ORBIS\n\n" + "\n\n".join(f"## {label}\n\n{value}" for label, value in FACTS),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_gives_the_same_facts(layout):
    pairs, loose = parse_fields(LAYOUTS[layout])
    assert pairs == FACTS and loose == []


def test_a_markdown_folder_and_a_jsonl_file_in_any_layout_give_the_same_documents(tmp_path):
    folder = tmp_path / "md"
    folder.mkdir()
    (folder / "orbis.md").write_text(LAYOUTS["## Label headings"], encoding="utf-8")
    jsonl = write_jsonl(tmp_path / "c.jsonl", [
        {"id": f"c{n}", "content": f"Nom : ORBIS\n{content}", "metadata": {"id": "orbis", "nom": "ORBIS"}}
        for n, content in enumerate(v for k, v in LAYOUTS.items() if k != "## Label headings")
    ])
    from_md, from_jsonl = documents(load_corpus(folder)), documents(load_corpus(jsonl))
    assert facts_by_title(from_md) == facts_by_title(from_jsonl) == {"ORBIS": FACTS}
    assert from_jsonl[0].name_label == "Nom"  # "Nom : ORBIS" names the document: no fact
    assert len(from_jsonl) == 1 and len(from_jsonl[0].chunk_ids) == 4  # four chunks, one document


def test_one_markdown_file_holds_a_document_per_top_level_section(tmp_path):
    # dyag's parkjson2md writes a whole inventory to one file: a preamble,
    # then one "# Name" section per application.
    sheets = sorted((SAMPLES / "corpus_md").glob("*.md"))
    whole = tmp_path / "parc.md"
    whole.write_text("# Applications\n\n*Document généré le 01/12/2026*\n\n---\n\n"
                     + "\n---\n\n".join(md.read_text(encoding="utf-8") for md in sheets), encoding="utf-8")
    from_file = documents(load_corpus(whole))
    from_folder = documents(load_corpus(SAMPLES / "corpus_md"))
    assert [d.title for d in from_file] == ["Applications", *(d.title for d in from_folder)]
    assert facts_by_title(from_file[1:]) == facts_by_title(from_folder)


def test_a_json_inventory_gives_a_document_per_record(tmp_path):
    records = {"applications": [
        {"id": 4107, "nom": "Marégraphe", "statut_si": "En production", "descriptif": "Collecte.\n\nPublie.",
         "contacts": [{"role": "Cheffe de projet", "contact": "LEROUX Anne", "courriel": "a@x.fr"}, {"contact": "MARTIN Paul"}],
         "données liées": ["Fichiers fonciers", "Cadastre"], "https": True, "utilisateurs": None},
        {"id": "5521", "nom": "Terrabase", "statut_si": "En développement"},
    ]}
    path = tmp_path / "parc.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    docs = documents(load_corpus(path))
    assert [(d.doc_id, d.name_label) for d in docs] == [("4107", "nom"), ("5521", "nom")]
    assert facts_by_title(docs) == {
        "Marégraphe": [("id", "4107"), ("statut si", "En production"), ("descriptif", "Collecte. Publie."),
                       ("contacts", "Cheffe de projet : LEROUX Anne : a@x.fr, MARTIN Paul"),
                       ("données liées", "Fichiers fonciers, Cadastre"), ("https", "true")],
        "Terrabase": [("id", "5521"), ("statut si", "En développement")],
    }
    # chunk objects in a JSON list are read as the JSONL file's lines
    chunks = [json.loads(line) for line in (SAMPLES / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    path.write_text(json.dumps(chunks, ensure_ascii=False), encoding="utf-8")
    assert documents(load_corpus(path)) == documents(load_corpus(SAMPLES / "corpus.jsonl"))


def test_a_spreadsheet_export_gives_a_document_per_row(tmp_path):
    import csv

    from_jsonl = documents(load_corpus(SAMPLES / "corpus.jsonl"))
    labels = list(dict.fromkeys(label for doc in from_jsonl for label, _ in doc.fields))
    path = tmp_path / "parc.csv"
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, delimiter=";")  # a French spreadsheet's export
        writer.writerow(["Application", *labels])
        for doc in from_jsonl:
            values = dict(doc.fields)
            writer.writerow([doc.title, *(values.get(label, "") for label in labels)])
    from_csv = documents(load_corpus(path))
    assert facts_by_title(from_csv) == facts_by_title(from_jsonl)
    assert [d.doc_id for d in from_csv] == ["4107", "5521"]  # the "Identifiant" column
    assert {d.name_label for d in from_csv} == {"Application"}


def test_a_value_on_several_lines_free_text_and_sentences_with_a_colon():
    content = (
        "# ORBIS\n\nDescription: ORBIS réserve des salles.\nIl sert aussi aux véhicules.\n\n"
        "Une phrase libre, sans étiquette.\nNote importante pour tous les agents de la Région qui réservent : voir le wiki\n"
        "## Historique\n\nCréé en 2016.\nRefondu en 2021.\n\n## Détails\n\nStatut: En test\nVersion: 2"
    )
    pairs, loose = parse_fields(content)
    assert pairs == [
        ("Description", "ORBIS réserve des salles. Il sert aussi aux véhicules."),
        ("Historique", "Créé en 2016. Refondu en 2021."),
        ("Statut", "En test"),  # a heading over "Label: value" lines only groups them
        ("Version", "2"),
    ]
    # a sentence is no label: free text, as is an unlabelled line
    assert loose == ["Une phrase libre, sans étiquette.", "Note importante pour tous les agents de la Région qui réservent : voir le wiki"]
    assert parse_fields("https://orbis.exemple.fr: le site")[0] == []  # an address is no label


# ---------------------------------------------------------------- dyag's original formats


def test_a_heading_over_one_plain_label_line_holds_it_as_its_text():
    # A Debian description starts "GNU C Library: Shared libraries ...": under
    # its heading it is the description, not a field "GNU C Library". Two
    # such lines, or one marked up, are fields the heading groups; list
    # items are the heading's text.
    text = "GNU C Library: Shared libraries used by nearly all programs."
    assert parse_fields(f"## Description\n\n{text}")[0] == [("Description", text)]
    assert parse_fields("## Détails\n\n**Statut:** En test")[0] == [("Statut", "En test")]
    assert parse_fields("## Détails\n\nStatut: En test\nVersion: 2")[0] == [("Statut", "En test"), ("Version", "2")]
    assert parse_fields("## Détails\n\n- **Statut**: En test\n- Version: 2")[0] == [("Détails", "Statut: En test, Version: 2")]


def test_markdown_in_a_value_is_read_as_text_and_nothing_else_is():
    assert plain_text("*(accès agents)*, **En production**") == "(accès agents), En production"
    assert plain_text("[https://a.fr](https://a.fr/) [Doc](https://a.fr/doc)") == "https://a.fr/ Doc (https://a.fr/doc)"
    for unchanged in (">=2.7, !=3.0.*, !=3.1.*", "2**8", "x * y * z", "__init__"):
        assert plain_text(unchanged) == unchanged


def test_dyag_parkjson2md_sheets_read_as_text():
    # dyag's parkjson2md writes short fields as "**Label:** value" lines and
    # lists as items under a heading, their kinds, roles and dates in bold,
    # addresses as links.
    sheet = (
        "# ORBIS\n\n**Nom complet:** Outil de réservation\n**Statut:** En production\n\n"
        "## Domaines métier\n\n- Moyens généraux > Logistique\n- Immobilier\n\n"
        "## Sites web\n\n- **Production** : [https://orbis.exemple.fr](https://orbis.exemple.fr/) : *(accès agents)*\n"
        "- [Documentation](https://doc.exemple.fr/orbis)\n\n"
        "## Événements\n\n- **02/09/2016** : Mise en production\n- **15/03/2020** : Refonte\n\n"
        "## Contacts\n\n- **Chef de projet** : MARTIN Julie : <julie.martin@exemple.fr>\n"
        "- **Développeur** : DURAND Paul : <paul.durand@exemple.fr>\n"
    )
    assert parse_fields(sheet) == ([
        ("Nom complet", "Outil de réservation"),
        ("Statut", "En production"),
        ("Domaines métier", "Moyens généraux > Logistique, Immobilier"),
        # a site's kind, a role or a date starting an item is no label: "Production"
        # would take the questions asking whether ORBIS is in production
        ("Sites web", "Production : https://orbis.exemple.fr/ : (accès agents), Documentation (https://doc.exemple.fr/orbis)"),
        ("Événements", "02/09/2016 : Mise en production, 15/03/2020 : Refonte"),
        ("Contacts", "Chef de projet : MARTIN Julie : <julie.martin@exemple.fr>, Développeur : DURAND Paul : <paul.durand@exemple.fr>"),
    ], [])


def test_a_value_equal_to_its_title_is_a_fact_unless_the_label_names_most_documents(tmp_path):
    # Markdown sheets have no name line: a package whose section is its own
    # name keeps its section, and the corpus gets no name label from it.
    folder = tmp_path / "md"
    folder.mkdir()
    for name, section in (("perl", "perl"), ("curl", "web"), ("grep", "utils")):
        (folder / f"{name}.md").write_text(f"# {name}\n\n## Section\n\n{section}\n\n## Priority\n\noptional\n", encoding="utf-8")
    docs = documents(load_corpus(folder))
    assert facts_by_title(docs)["perl"] == [("Section", "perl"), ("Priority", "optional")]
    assert {d.name_label for d in docs} == {""}
    # A label that names every document ("Package: perl" in each chunk) is the name line.
    chunks = [{"id": f"{n}-{k}", "content": f"Package: {n}\n{line}", "metadata": {"id": n, "nom": n}}
              for n, section in (("perl", "perl"), ("curl", "web")) for k, line in enumerate([f"Section: {section}", "Priority: optional"])]
    docs = documents(load_corpus(write_jsonl(tmp_path / "c.jsonl", chunks)))
    assert facts_by_title(docs)["perl"] == [("Section", "perl"), ("Priority", "optional")]
    assert {d.name_label for d in docs} == {"Package"}


def test_the_one_field_per_chunk_sample_and_its_markdown_give_the_same_facts():
    chunks = load_corpus(SAMPLES / "corpus.jsonl")
    from_jsonl, from_md = documents(chunks), documents(load_corpus(SAMPLES / "corpus_md"))
    assert len(chunks) > len(from_jsonl) == 2  # one field per chunk, two documents
    assert facts_by_title(from_jsonl) == facts_by_title(from_md)
    facts = facts_by_title(from_jsonl)
    assert set(facts) == {"Marégraphe", "Terrabase"}
    assert ("Statut", "En production") in facts["Marégraphe"] and ("Identifiant", "5521") in facts["Terrabase"]
    assert ("Données liées", "Fichiers fonciers, Cadastre") in facts["Terrabase"]
    # every chunk's "Application: <name>" line names its document: no fact of it
    assert all(label != "Application" for pairs in facts.values() for label, _ in pairs)
    assert {d.name_label for d in from_jsonl} == {"Application"}
    # the same profile either way (but the name line's label, which the Markdown lacks)
    jsonl_profile, md_profile = build_profile(from_jsonl), build_profile(from_md)
    assert jsonl_profile.schema == md_profile.schema == "fr"
    assert jsonl_profile.fields == md_profile.fields
    assert sorted(jsonl_profile.aliases.values()) == sorted(md_profile.aliases.values()) == [["Réseau d'observation du niveau des mers"]]
    turns = lambda p: [(t["question"], t["answer"]) for t in p.example["turns"]]  # noqa: E731
    assert turns(jsonl_profile) == turns(md_profile) and turns(md_profile)


def test_labels_the_schema_lacks_are_fields_with_questions():
    extra = Chunk("c", "Application: Cadastra\nIdentifiant: 6001\nBriques logicielles: PostgreSQL, QGIS Server", "6001", "Cadastra")
    profile = build_profile(documents([*load_corpus(SAMPLES / "corpus.jsonl"), extra]))
    by_name = {f.name: f for f in profile.fields}
    schema = cached_schema(profile.schema)
    for label in ("Identifiant", "Briques logicielles"):
        info = by_name[label]  # the corpus's label names the field
        assert info.labels == (label,) and info.templates == () and info.documents >= 1
        questions = field_questions(info, schema)
        assert questions and all("{doc}" in q for q in questions)
        assert len([q for q in questions if normalise(label) in normalise(q)]) >= len(schema.generic_templates)
    # a field the schema lacks is also asked about the way its values look
    assert by_name["Identifiant"].kind == "identifier"
    identifiers = [t for t in schema.kind_templates["identifier"] if "{label}" not in t]
    assert identifiers and set(identifiers) <= set(field_questions(by_name["Identifiant"], schema))
    # "PostgreSQL, QGIS Server": a list, asked about as what the application relies on
    assert by_name["Briques logicielles"].kind == "list"
    assert "De quoi dépend {doc} ?" in field_questions(by_name["Briques logicielles"], schema)
    # labels the schema knows take its field's name, its wordings, and keep the corpus's spelling first
    assert by_name["status"].labels[0] == "Statut" and by_name["status"].templates and by_name["status"].documents == 2
    assert by_name["website"].labels[0] == "Sites web" and "Site web" not in by_name["website"].labels
    assert by_name["actors"].labels[0] == "Acteurs" and by_name["data"].labels[0] == "Données liées"
    # a synonym the schema lists meets its field: "Mise en production" is the go-live date
    assert by_name["go_live"].labels[0] == "Mise en production" and by_name["go_live"].documents == 1
    # a field only the schema knows is kept, held by no document
    assert by_name["hosting"].documents == 0 and by_name["hosting"] not in profile.corpus_fields


def test_labels_the_schema_lacks_make_training_examples(tmp_path):
    result = generate.run(GenerateConfig(corpus=str(SAMPLES / "corpus.jsonl"), output=str(tmp_path / "qa.jsonl"), split=False))
    rows = read(result.files["all"])
    by_field = {}
    for row in rows:
        by_field.setdefault((row["metadata"]["title"], row["metadata"]["field"]), []).append(row)
    assert {row["messages"][-1]["content"] for row in by_field[("Terrabase", "Identifiant")]} == {"5521"}
    assert {row["messages"][-1]["content"] for row in by_field[("Terrabase", "data")]} == {"Fichiers fonciers, Cadastre"}
    assert {row["messages"][-1]["content"] for row in by_field[("Marégraphe", "Identifiant")]} == {"4107"}
    # a field one document lacks is taught as a refusal for it
    assert {row["messages"][-1]["content"] for row in by_field[("Marégraphe", "data")]} == {"Je ne sais pas"}
    for row in by_field[("Terrabase", "Identifiant")]:
        assert "Terrabase" in row["messages"][1]["content"]
    assert {r["metadata"]["schema"] for r in rows} == {"fr"}
    assert result.manifest["splits"]["all"]["per_field"]["Identifiant"] > 0


def test_label_variants_meet_in_one_field():
    chunks = [
        Chunk("a", "Nom : A\nSite web : https://a.fr\nBrique logicielle : PostgreSQL\nStatut : En production", "a", "A"),
        Chunk("b", "Nom : B\nSites web : https://b.fr\nBriques logicielles : QGIS Server\nStatut : En test", "b", "B"),
        Chunk("c", "Nom : C\nSITE WEB : https://c.fr\nBRIQUES LOGICIELLES : GeoServer", "c", "C"),
    ]
    profile = build_profile(documents(chunks), "fr")
    website = profile.field_for_label("Sites web")
    assert website is profile.field_for_label("Site web") is profile.field_for_label("SITE WEB")
    assert website.name == "website" and website.documents == 3
    bricks = profile.field_for_label("Briques logicielles")
    assert bricks is profile.field_for_label("Brique logicielle") is profile.field_for_label("BRIQUES LOGICIELLES")
    assert bricks.name == "Brique logicielle" and bricks.documents == 3
    assert set(bricks.labels) == {"Brique logicielle", "Briques logicielles", "BRIQUES LOGICIELLES"}
    assert len([f for f in profile.corpus_fields]) == 3  # website, the software bricks, status


def test_an_identifier_is_asked_for_as_a_reference_not_a_quantity():
    chunks = [
        Chunk("a", "Nom : A\nIdentifiant : 4107\nAgents : 120\nCode postal : 35000", "a", "A"),
        Chunk("b", "Nom : B\nIdentifiant : 5521\nAgents : 35\nCode postal : 29200", "b", "B"),
    ]
    profile = build_profile(documents(chunks), "fr")
    schema = cached_schema("fr")
    kinds = {f.name: f.kind for f in profile.corpus_fields}
    # a label with an identifier's word and one-word values; a count stays a number
    assert kinds == {"Identifiant": "identifier", "Agents": "number", "Code postal": "identifier"}
    asked = field_questions(profile.field_for_label("Identifiant"), schema)
    assert "Quel est le numéro de {doc} ?" in asked and not any("combien" in normalise(q) for q in asked)
    assert any("combien" in normalise(q) for q in field_questions(profile.field_for_label("Agents"), schema))
    # English: "Package ID"; an identifier's word over values of several words is no identifier
    english = [
        Chunk("f", "Name: foo\nPackage ID: PKG-0042\nCode of conduct: Be kind to each other", "f", "foo"),
        Chunk("g", "Name: goo\nPackage ID: PKG-0077\nCode of conduct: Treat others well", "g", "goo"),
    ]
    kinds = {f.name: f.kind for f in build_profile(documents(english), "en").corpus_fields}
    assert kinds["Package ID"] == "identifier" and kinds["Code of conduct"] != "identifier"


def test_value_kinds_come_from_most_values():
    assert value_kind(["https://a.example.org", "http://b.example.org/x", "www.c.example.org"]) == "url"
    assert value_kind(["Ann Lee <ann@example.org>", "Bob <bob@x.org>, Cy <cy@x.org>"]) == "person"
    assert value_kind(["2016-09-02", "02/09/2016", "12/2019"]) == "date"
    assert value_kind(["18062", "6 200", "3,5 Go", "12 %"]) == "number"
    assert value_kind(["1.6-2.1", "0.9", "2.1.0"]) == ""  # versions are no numbers
    assert value_kind(["https://a.example.org", "En production", "Abandonné"]) == ""  # no kind holds most
    assert value_kind(["idna, urllib3, certifi", "libc6 (>= 2.34), libacl1 (>= 2.2.23)", "attrs"]) == "list"
    # a sentence with commas is no list: its parts are longer than four words
    assert value_kind(["The tool reads the records of the archive, and sends them on, every night"] * 2) == ""
    assert shared_values(["optional", "required", "optional", "a sentence of more than three words", "required"]) == (
        "optional", "required",
    )
    # the roles in brackets that qualify a list's items recur where whole values do not; a version is no role
    actors = ["DGPR (Maîtrise d'ouvrage)", "SNUM (Maîtrise d'œuvre), DDT (Maîtrise d'ouvrage)", "libc6 (>= 2.34)", "zlib1g (>= 2.34)"]
    assert shared_values(actors) == ("Maîtrise d'ouvrage",)
    # the commonest few: a large corpus shares many versions, which are no category
    versions = [f"1.{n}" for n in range(40) for _ in range(2)] + ["optional"] * 3
    assert shared_values(versions) == ("optional", "1.0", "1.1", "1.2", "1.3")


# ---------------------------------------------------------------- any language


ENGLISH = [
    ("foo", "Foo", "Version: 2.1.0\nMaintainer: Alice Smith\nHomepage: https://foo.example.org\n"
     "Description: The library reads the records of the archive and sends them to the warehouse."),
    ("bar", "Bar", "Version: 0.9\nMaintainer: Bob Jones\nHomepage: https://bar.example.org\n"
     "Description: A tool for the migration of the old database to the cloud."),
    ("baz", "Baz", "Version: 1.4\nMaintainer: Carol White\n"
     "Description: It is the service that signs the documents of the users."),
]


def english_corpus(path):
    return write_jsonl(path, [{"id": i, "content": f"Name: {t}\n{body}", "metadata": {"id": i, "title": t}} for i, t, body in ENGLISH])


def test_an_english_corpus_without_schema_is_understood_in_english(tmp_path):
    docs = documents(load_corpus(english_corpus(tmp_path / "en.jsonl")))
    assert detect_schema(c for _, _, c in ENGLISH) == "en" and resolve_schema("auto", [c for _, _, c in ENGLISH]) == "en"
    profile = build_profile(docs)
    assert (profile.schema, profile.language, profile.name_label) == ("en", "en", "Name")
    schema = cached_schema(profile.schema)
    assert schema.unknown_answer == "I don't know"
    by_label = {f.label: f for f in profile.corpus_fields}
    assert set(by_label) == {"Version", "Maintainer", "Homepage", "Description"}
    assert by_label["Homepage"].documents == 2 and by_label["Version"].documents == 3
    assert field_questions(by_label["Maintainer"], schema)[0] == "What is the maintainer of {doc}?"
    # its worked example: lines of its sheets, and the refusal for the field one document lacks
    turns = profile.example["turns"]
    assert turns and {t["answer"] for t in turns} >= {"I don't know"}
    for turn in turns:
        assert turn["answer"] == "I don't know" or turn["answer"] in turn["sheet"].splitlines()
        assert turn["sheet"].startswith(f"Name: {turn['title']}\n")


def test_generation_and_the_worked_example_work_in_english(tmp_path, tiny_model_dir):
    from dyag_mlops.retrieval.rag import Retrieved
    from dyag_mlops.systems.models import load_base_model
    from dyag_mlops.systems.predictor import Predictor

    corpus = english_corpus(tmp_path / "en.jsonl")
    result = generate.run(GenerateConfig(corpus=str(corpus), output=str(tmp_path / "qa.jsonl"), split=False))
    rows = read(result.files["all"])
    assert result.manifest["schema"] == "en"
    answers = {(r["metadata"]["title"], r["metadata"]["field"]): r["messages"][-1]["content"] for r in rows}
    assert answers[("Foo", "Maintainer")] == "Alice Smith" and answers[("Bar", "Version")] == "0.9"
    assert answers[("Baz", "Homepage")] == "I don't know"  # the field Baz lacks
    en = cached_schema("en")
    assert all(r["messages"][0]["content"] == en.system_prompt for r in rows)
    assert "Je ne sais pas" not in json.dumps(rows, ensure_ascii=False)
    # the base model is shown the corpus's worked example, in English
    profile = build_profile(documents(load_corpus(corpus)))
    model, tokenizer, _ = load_base_model(str(tiny_model_dir), device="cpu")
    sheet = render_sheet(documents(load_corpus(corpus))[2], profile.name_label)
    for focus in (True, False):
        retriever = FixedRetriever(Retrieved("baz", "baz", "Baz", sheet, 0.9), profile=profile)
        predictor = Predictor("rag", model, tokenizer, retriever=retriever, top_k=1, max_new_tokens=6, grounded=True,
                              worked_example=True, focus=focus)
        (messages,), _ = predictor.messages_for(["What is the homepage of Baz?"])
        assert messages[0]["content"] == en.system_prompt
        assert len(messages) == 2 + 2 * len(profile.example["turns"])
        assert messages[-1]["content"].startswith("Context:\n[1] ") and messages[-1]["content"].endswith("Question: What is the homepage of Baz?")
        (answer,) = predictor.answer(["What is the homepage of Baz?"])
        assert answer.error is None
        # grounded: a piece of a line of the (narrowed) sheet, or the English refusal
        assert "I don't know".startswith(answer.text) or any(answer.text in line for line in sheet.splitlines()), answer.text


def language_pack(tmp_path, **extra):
    """A user's schema file holding a language and no field."""
    path = tmp_path / "pack.json"
    path.write_text(json.dumps({"language": "en", **extra}), encoding="utf-8")
    return str(path)


def test_a_user_schema_with_no_fields_is_a_language_pack(tmp_path):
    from dyag_mlops.retrieval.focus import FieldRouter

    pack = language_pack(
        tmp_path, unknown_answer="No idea", context_heading="Records:", question_heading="Q: ",
        generic_templates=["What is the {label} of {doc}?", "{doc}: {label}?"],
    )
    schema = load_schema(pack)
    assert schema.fields == () and schema.unknown_answer == "No idea"
    corpus = english_corpus(tmp_path / "en.jsonl")
    profile = build_profile(documents(load_corpus(corpus)), pack)
    assert profile.schema == pack and {f.name for f in profile.fields} == {"Version", "Maintainer", "Homepage", "Description"}
    assert {t["answer"] for t in profile.example["turns"]} >= {"No idea"}
    router = FieldRouter(profile, schema)
    assert router.fields(["What is the maintainer of Foo?", "Foo: version?"], ["Foo", "Foo"]) == ["Maintainer", "Version"]
    rows = read(generate.run(GenerateConfig(corpus=str(corpus), schema=pack, output=str(tmp_path / "qa.jsonl"), split=False)).files["all"])
    assert {r["metadata"]["schema"] for r in rows} == {pack}
    assert any(r["messages"][-1]["content"] == "No idea" for r in rows)
    assert any(r["messages"][1]["content"] == "What is the maintainer of Foo?" and r["messages"][-1]["content"] == "Alice Smith" for r in rows)


def test_a_language_pack_without_question_templates_does_not_break_the_profile(tmp_path):
    """An older user schema (no generic templates): labels it does not know
    have no question; the profile and its worked example are still built."""
    profile = build_profile(documents(load_corpus(english_corpus(tmp_path / "en.jsonl"))), language_pack(tmp_path))
    assert {f.name for f in profile.corpus_fields} == {"Version", "Maintainer", "Homepage", "Description"}
    assert profile.example.get("turns", []) == []


# ---------------------------------------------------------------- inspect-corpus


def test_inspect_corpus_shows_fields_with_their_coverage_and_the_language(tmp_path):
    runner = CliRunner()
    corpus = str(english_corpus(tmp_path / "en.jsonl"))
    shown = runner.invoke(main, ["inspect-corpus", corpus, "--questions", "1"])
    assert shown.exit_code == 0, shown.output
    out = shown.output
    assert "documents: 3" in out and "language: en (schema en)" in out and "'Name'" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and "documents" in line}
    assert set(lines) == {"Version", "Maintainer", "Homepage", "Description"}
    assert "3/3 documents" in lines["Version"] and "2/3 documents" in lines["Homepage"]
    assert "e.g. What is the version of Foo?" in out
    as_json = runner.invoke(main, ["inspect-corpus", corpus, "--json"])
    assert as_json.exit_code == 0
    data = json.loads(as_json.output)
    assert data["schema"] == "en" and data["documents"] == 3
    assert {f["name"]: f["documents"] for f in data["fields"] if f["documents"]}["Homepage"] == 2
    # the demo corpus, in French, with a schema named
    demo = runner.invoke(main, ["inspect-corpus", "--schema", "fr"])
    assert demo.exit_code == 0 and "language: fr (schema fr)" in demo.output and "40/40 documents" in demo.output
    missing = runner.invoke(main, ["inspect-corpus", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code != 0 and "corpus not found" in missing.output


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module", params=["corpus.jsonl", "corpus_md"])
def sample_pipeline(request, tmp_path_factory, tiny_model_dir):
    """The pipeline on one of dyag's original-format samples, with its own
    questions: index, RAFT generation, a few fine-tuning steps, rag and hybrid."""
    from dyag_mlops import pipeline
    from dyag_mlops.config import PipelineConfig

    work = tmp_path_factory.mktemp("sample") / "work"
    config = PipelineConfig(
        corpus=str(SAMPLES / request.param), eval_file=str(SAMPLES / "questions.jsonl"), base_model=str(tiny_model_dir),
        count=0, epochs=0.1, systems="rag,hybrid", workdir=str(work), registered_model=f"sample-qa-{request.param.replace('.', '-')}",
        reuse=False,
    )
    pipeline.run(config)
    return work


def test_the_pipeline_runs_on_the_original_formats(sample_pipeline):
    from dyag_mlops.evaluation.evaluate import QUALITY_METRICS

    work = sample_pipeline
    questions = read(SAMPLES / "questions.jsonl")
    for system in ("rag", "hybrid"):
        results = json.loads((work / f"results_{system}.json").read_text(encoding="utf-8"))
        assert results["metadata"]["num_questions"] == len(questions) == len(results["results"])
        for name in (*QUALITY_METRICS, "success_rate"):
            assert 0.0 <= results["metrics"][name] <= 1.0, (system, name)
        assert all(r["error"] is None for r in results["results"])
    manifest = json.loads((work / "adapter" / "final" / "dyag_manifest.json").read_text(encoding="utf-8"))
    assert manifest["focus"] is True and manifest["schema"] == "fr"  # the adapter is asked the way it was trained
    assert (work / "rag_index" / "corpus_profile.json").is_file()


def test_raft_training_on_the_original_formats_answers_from_the_asked_line(sample_pipeline):
    from dyag_mlops.data.evalset import split_messages
    from dyag_mlops.retrieval.rag import read_profile

    profile = read_profile(sample_pipeline / "rag_index")
    assert profile.schema == "fr" and profile.documents == 2
    rows = read(sample_pipeline / "data" / "dataset_train.jsonl")
    assert rows
    refusals = 0
    for row in rows:
        meta = row["metadata"]
        question, answer = split_messages(row["messages"])
        context = question.split("\n", 1)[1].rsplit("\n\nQuestion : ", 1)[0].removeprefix("[1] ")
        assert meta["context_ids"] == [f"{meta['doc_id']}#{meta['field']}"]  # its own sheet, narrowed to the asked field
        if answer == "Je ne sais pas":
            refusals += 1
            assert context == ""  # the document lacks the field
            continue
        labels = next(f.labels for f in profile.fields if f.name == meta["field"])
        assert any(f"{label}: {answer}" in context.splitlines() for label in labels), (meta["field"], answer, context)
    assert refusals < len(rows) / 2, f"{refusals} of {len(rows)} training answers are refusals"
