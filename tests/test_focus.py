import json
from pathlib import Path

import pytest

from conftest import SAMPLES, FixedRetriever, demo_profile, demo_sheets, write_jsonl
from dyag_mlops.data.corpus import load_corpus
from dyag_mlops.data.inventory import build_profile, cached_schema, documents, render_sheet
from dyag_mlops.retrieval.focus import ROUTER_SURE, ROUTER_UNPLACED, FieldRouter, asks_who, narrow_hits
from dyag_mlops.retrieval.rag import Retrieved, field_router
from dyag_mlops.systems.prompts import build_messages, user_content

FR = cached_schema("fr")
UNKNOWN = FR.unknown_answer
# A sheet as the index stores it ("Label: value"), of an application the demo corpus lacks.
SHEET = (
    "Nom: ORBIS\nNom complet: Outil de Réservation des Bâtiments et Salles\nStatut: En production\n"
    "Hébergement: Datacenter Nantes-Est\nTechnologie principale: PHP / Symfony\n"
    "Description: ORBIS permet de réserver des salles.\nIl sert aussi aux véhicules de service.\n"
    "Contacts: Julie Martin (julie.martin@exemple.fr)\nSite web: https://orbis.exemple.fr"
)


def router():
    """The demo corpus's router (its fields, the French schema's wordings)."""
    return field_router(demo_profile(), FR)


CORPORA = Path(__file__).resolve().parent.parent / "corpora"


def router_and_sheets(corpus: Path | list) -> tuple[FieldRouter, dict[str, str]]:
    """A corpus's router (the schema it is read with) and its sheets by
    title; the corpus a file or its chunks."""
    docs = documents(load_corpus(corpus) if isinstance(corpus, Path) else corpus)
    profile = build_profile(docs, "auto")
    return FieldRouter(profile, cached_schema(profile.schema)), {d.title: render_sheet(d, profile.name_label) for d in docs}


# Phrasings written for this test, none of them a template of the schema
# (the router is trained on the templates, labels and shared values only).
@pytest.mark.parametrize(
    "question, field",
    [
        # "prod" lies near the technology words in the vector space; the
        # status values the sheets share ("En production") pull it back.
        ("orbis, il est en prod ou pas ?", "status"),
        ("Sur quels serveurs tourne ORBIS ?", "hosting"),
        ("le lien vers orbis svp", "website"),
        ("Quelle personne joindre au sujet d'ORBIS ?", "contacts"),
        ("ORBIS signifie quoi exactement ?", "full_name"),
        ("Quand a démarré ORBIS ?", "go_live"),
    ],
)
def test_the_router_names_the_field_of_a_phrasing_it_never_saw(question, field):
    assert router().fields([question]) == [field]


def test_word_vectors_route_a_word_no_template_holds():
    # No technology template says "codé"; its vector lies near the
    # technology words. Without vectors, the router takes the question for
    # the description.
    import dataclasses

    question = "ORBIS est codé en quoi ?"
    assert router().fields([question], ["ORBIS"]) == ["technology"]
    without = FieldRouter(demo_profile(), dataclasses.replace(FR, word_vectors=""))
    assert without.fields([question], ["ORBIS"]) != ["technology"]


def test_values_the_documents_share_route_to_their_field():
    # "Java" and "PHP" are values of several sheets' technology: no template
    # needs to say them, and no word vector either.
    import dataclasses

    profile = demo_profile()
    technology = next(f for f in profile.fields if f.name == "technology")
    assert {"Java", "PHP"} <= {v.split("/")[0] for v in technology.shared_values}
    without = FieldRouter(profile, dataclasses.replace(FR, word_vectors=""))
    assert without.fields(["C'est du Java ou du PHP, ORBIS ?"], ["ORBIS"]) == ["technology"]
    unshared = dataclasses.replace(profile, fields=tuple(dataclasses.replace(f, shared_values=()) for f in profile.fields))
    assert FieldRouter(unshared, dataclasses.replace(FR, word_vectors="")).fields(
        ["C'est du Java ou du PHP, ORBIS ?"], ["ORBIS"]
    ) != ["technology"]


def test_a_schema_naming_word_vectors_that_are_not_installed_is_refused(tmp_path):
    from importlib import resources

    from dyag_mlops.data.inventory import load_schema
    from dyag_mlops.errors import DyagError

    schema = json.loads((resources.files("dyag_mlops") / "resources" / "schemas" / "fr.json").read_text("utf-8"))
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({**schema, "word_vectors": "xx_no_such_vectors"}), encoding="utf-8")
    with pytest.raises(DyagError, match=r"schema\.json: word_vectors 'xx_no_such_vectors' is not installed"):
        load_schema(str(path))


def test_a_sheet_keeps_the_lines_of_its_field_and_free_text_stays_whole():
    r = router()
    assert r.narrow(SHEET, "status") == "Statut: En production"
    # a value written on two lines stays whole
    assert r.narrow(SHEET, "description") == "Description: ORBIS permet de réserver des salles.\nIl sert aussi aux véhicules de service."
    assert r.narrow(SHEET, "go_live") == ""  # the sheet has no such field
    assert r.narrow("ORBIS est un outil de réservation.\nIl date de 2016.", "go_live") is None
    assert r.narrow("", "status") is None
    # a sheet written "Label : value" (as the demo corpus is) is a sheet too
    assert r.narrow(SHEET.replace(": ", " : "), "status") == "Statut : En production"


def test_narrowed_hits_name_their_field_and_no_router_changes_nothing():
    hits = [[Retrieved("app-1", "app-1", "ORBIS", SHEET, 0.9)], [Retrieved("app-1", "app-1", "ORBIS", SHEET, 0.9)]]
    questions = ["Quel est le statut de ORBIS ?", "Quelle est la date de mise en service de ORBIS ?"]
    status, go_live = narrow_hits(router(), questions, hits)
    assert (status[0].chunk_id, status[0].content) == ("app-1#status", "Statut: En production")
    assert (go_live[0].chunk_id, go_live[0].content) == ("app-1#go_live", "")
    assert status[0].doc_id == "app-1"  # retrieval metrics still see the document
    assert narrow_hits(None, questions, hits) == hits


def test_a_question_on_a_detail_gets_the_clause_that_holds_its_words():
    r = router()
    sheet = SHEET.replace(
        "Description: ORBIS permet de réserver des salles.\nIl sert aussi aux véhicules de service.",
        "Description: ORBIS gère 240 salles de réunion, et les agents réservent aussi les véhicules de service.",
    )
    field, text = r.focus(sheet, "Combien de salles de réunion gère ORBIS ?", "ORBIS")
    assert (field, text) == ("description", "Description: ORBIS gère 240 salles de réunion")
    # Naming the field's label keeps the routed field, whatever the sheet's wording.
    assert r.focus(sheet, "Le système de réservation des salles, quel statut ?", "ORBIS") == ("status", "Statut: En production")
    # The application's names are no evidence: "réservation", "bâtiments" and "salles" are in its full name.
    assert r.focus(sheet, "L'outil de réservation des bâtiments et salles, il est hébergé où ?", "ORBIS")[0] == "hosting"
    # Words of the fields' templates are no evidence either: routed as usual.
    assert r.focus(sheet, "Quelle est la technologie principale de ORBIS ?", "ORBIS")[0] == "technology"


def test_clauses_holding_as_many_of_the_question_s_own_words_are_told_apart_by_its_other_words():
    # "consulter" and "bureaux" are one own word in each clause; "projet",
    # a word of the fields' wording, is said by the second clause only.
    sheet = SHEET.replace(
        "Description: ORBIS permet de réserver des salles.\nIl sert aussi aux véhicules de service.",
        "Description: ORBIS permet de consulter les plannings et de louer plus de 240 bureaux de projet.",
    )
    assert router().focus(sheet, "Combien de bureaux de projet peut-on consulter avec ORBIS ?", "ORBIS") == (
        "description", "Description: de louer plus de 240 bureaux de projet.")


def test_a_run_of_the_question_s_words_that_a_value_holds_places_the_question():
    # dyag's layout: "projet" is a word of the fields' wording, "cheffe" the
    # only own word; the contact line holds "cheffe de projet" as the
    # question says it. The router alone leans to the status.
    r, sheets = router_and_sheets(SAMPLES / "corpus.jsonl")
    field, text = r.focus(sheets["Marégraphe"], "Qui est la cheffe de projet de Marégraphe ?", "Marégraphe")
    assert field == "contacts" and "LEROUX Anne (Cheffe de projet)" in text


def test_a_question_naming_a_long_field_gets_its_sentence_that_holds_its_words():
    # The question names the description: of its two sentences, the one
    # holding "véhicules" and "service" is kept; a one-sentence field is kept whole.
    r = router()
    question = "D'après sa description, ORBIS sert aussi à quoi pour les véhicules de service ?"
    assert r.focus(SHEET, question, "ORBIS") == ("description", "Description: Il sert aussi aux véhicules de service.")
    assert r.focus(SHEET, "Quelle est la description d'ORBIS ?", "ORBIS")[1].count("\n") == 1
    assert r.focus(SHEET, "Quel est le site web d'ORBIS pour les salles de service ?", "ORBIS") == (
        "website", "Site web: https://orbis.exemple.fr")


def test_a_question_the_router_cannot_place_gets_the_description_sentence_closest_in_meaning():
    # The question's word of its own is not on the sheet ("automobiles", not
    # "véhicules") and the router leans to another field; the description's
    # sentence is the sheet's line closest to the question in meaning.
    r = router()
    question = "Et les automobiles, pour ORBIS ?"
    assert r.ranked(question, "ORBIS")[0][0] != "description"
    assert r.focus(SHEET, question, "ORBIS") == ("description", "Description: Il sert aussi aux véhicules de service.")


def test_a_question_placed_nowhere_whose_words_the_sheet_lacks_keeps_nothing(monkeypatch):
    # Two words of its own, neither on the sheet, and a router that places
    # it in no field: the record does not say, and the only answer left is
    # the refusal. A router that leans to a field keeps the closest line.
    r = router()
    question = "Quelle mascotte a choisie l'équipe ORBIS ?"
    assert r.ranked(question, "ORBIS")[0][1] < ROUTER_UNPLACED
    field, kept = r.focus(SHEET, question, "ORBIS")
    assert kept == ""
    leaning = [(field, (ROUTER_UNPLACED + ROUTER_SURE) / 2)] + [(f.name, 0.01) for f in r.profile.corpus_fields if f.name != field]
    monkeypatch.setattr(r, "ranked", lambda q, names: leaning)  # the router is shared: undone after the test
    assert r.focus(SHEET, question, "ORBIS")[1] != ""


def test_a_question_the_router_cannot_place_keeps_the_line_closest_in_meaning():
    # The router leans, unsure, to the summary; no word of the question is
    # on the sheet ("keeps ... going"); the Maintainer line is the closest in
    # meaning, and is kept.
    r, sheets = router_and_sheets(CORPORA / "pydist" / "corpus_md")
    sheet = sheets["python-dateutil"]
    others = [f.name for f in r.profile.corpus_fields if f.name != "Summary"]
    r.ranked = lambda question, names: [("Summary", 0.3)] + [(f, 0.7 / len(others)) for f in others]
    assert r.focus(sheet, "Who keeps python-dateutil going nowadays?", "python-dateutil") == ("Maintainer", "Maintainer: Paul Ganssle")
    # A question whose words the sheet holds gets their line, as before.
    assert r.focus(sheet, "Which Python datetime extensions does python-dateutil offer?", "python-dateutil")[0] == "Summary"


def test_a_short_name_is_no_cue_to_the_closest_line():
    # "vim" is on the Homepage line (www.vim.org): left in, it made that
    # line the closest to any question naming vim. A short word of a longer
    # name that is a function word ("des") stays in the question.
    from dyag_mlops.retrieval.focus import _stems, _without_words

    r, sheets = router_and_sheets(CORPORA / "debian" / "corpus.jsonl")
    fields = [f.name for f in r.profile.corpus_fields]
    r.ranked = lambda question, names: [(f, 1 / len(fields)) for f in fields]
    assert r.focus(sheets["vim"], "What category is vim in?", "vim") == ("Section", "Section: editors")
    assert _without_words("Le portail des salles, c'est quoi ?", _stems("Portail des salles"), frozenset({"des"})) == "Le  des , c'est quoi ?"


def test_a_field_the_sheet_lacks_gives_way_to_one_the_router_cannot_tell_from_it():
    # markupsafe has a Maintainer-email, no Author-email: a question the
    # router splits between the two asks for the one the sheet has; a
    # router clear about the missing field gets nothing (the refusal), but
    # for a question asking who (test below).
    r, sheets = router_and_sheets(CORPORA / "pydist" / "corpus_md")
    question = "Who looks after markupsafe?"
    r.ranked = lambda q, names: [("Author-email", 0.48), ("Maintainer-email", 0.47), ("Summary", 0.05)]
    assert r.focus(sheets["MarkupSafe"], question, "markupsafe") == ("Maintainer-email", "Maintainer-email: Pallets <contact@palletsprojects.com>")
    r.ranked = lambda q, names: [("Author-email", 0.7), ("Maintainer-email", 0.25), ("Summary", 0.05)]
    assert r.focus(sheets["MarkupSafe"], "What is the e-mail address of the author of markupsafe?", "markupsafe") == ("Author-email", "")


def test_a_field_the_sheet_lacks_gives_way_to_a_line_that_says_a_word_of_the_question():
    # certifi has no dependencies; "provide" is no field's wording, and its
    # Summary says "providing".
    r, sheets = router_and_sheets(CORPORA / "pydist" / "corpus_md")
    r.ranked = lambda q, names: [("Dependencies", 0.83), ("Summary", 0.12), ("License", 0.05)]
    kept = r.focus(sheets["certifi"], "What does certifi provide?", "certifi")
    assert kept == ("Summary", "Summary: Python package for providing Mozilla's CA Bundle.")
    # A question saying only the field's wording keeps nothing.
    assert r.focus(sheets["certifi"], "What does certifi depend on?", "certifi") == ("Dependencies", "")


def test_a_question_asking_which_document_gets_the_sheet_s_name_line():
    # "Quelle application …" naming no document asks for the document itself:
    # the sheet keeps its name line, whatever field the rest of it points to.
    r = router()
    assert r.focus(SHEET, "Quelle application sert aux véhicules de service ?", "ORBIS") == ("Nom", "Nom: ORBIS")
    assert r.focus(SHEET, "Quelle est l'application hébergée à Nantes-Est ?", "ORBIS") == ("Nom", "Nom: ORBIS")
    # Naming the document, or its alias, it asks for one of its fields.
    assert r.focus(SHEET, "Quelle application est ORBIS, en production ou en test ?", "ORBIS")[0] == "status"
    assert r.focus(SHEET, "Quel est le statut de l'Outil de Réservation des Bâtiments et Salles ?", "ORBIS")[0] == "status"


def test_which_package_asks_for_the_name_in_english_with_the_corpus_s_name_label():
    r, sheets = router_and_sheets(CORPORA / "debian" / "corpus.jsonl")
    sheet = sheets["tmux"]
    assert r.profile.name_label == "Package"  # "package" is the schema's word too; the label is the corpus's
    assert r.focus(sheet, "Which package multiplexes terminals?", "tmux") == ("Package", "Package: tmux")
    assert r.focus(sheet, "Which version of the tmux package is installed?", "tmux")[0] == "Version"


VELIA = (
    "Nom: VELIA\nStatut: En test\nHébergement: Datacenter Lyon\n"
    "Description: Plateforme de suivi des vélos en libre-service. Elle compte les locations par station."
)


def test_a_question_naming_the_document_by_its_description_routes_on_its_other_words():
    # "la plateforme de suivi des vélos" names VELIA, as its name would: it is
    # no cue to the description field, and is left out before routing.
    r = router()
    entries = r.entries(VELIA)
    question = "La plateforme de suivi des vélos, elle est hébergée où ?"
    assert r.described_as(question, entries, "VELIA") == "la plateforme de suivi des velos"
    assert r.focus(VELIA, question, "VELIA") == ("hosting", "Hébergement: Datacenter Lyon")
    # A word said in the singular names it as its plural does ("vélo" of "vélos").
    assert r.described_as("La plateforme du vélo, elle est hébergée où ?", entries, "VELIA") == "la plateforme du velo"
    # Said with its name, the document needs no other naming words.
    assert r.described_as("VELIA, la plateforme de suivi des vélos, est hébergée où ?", entries, "VELIA") == ""
    # A name said whole needs none either, however short ("vim", "jq").
    vel = VELIA.replace("Nom: VELIA", "Nom: VEL")
    assert r.described_as("VEL, la plateforme de suivi des vélos, est hébergée où ?", r.entries(vel), "VEL") == ""
    # A field's label the description also says asks for that field; it names no document.
    sites = (
        "Nom: CERTA\nStatut: En production\nHébergement: Datacenter Lyon\n"
        "Description: Statut des sites web des lycées de la région et de leurs certificats."
    )
    question = "Quel est le statut des sites web des lycées de la région ?"
    assert r.described_as(question, r.entries(sites), "CERTA") == "des sites web des lycees de la region"
    assert r.focus(sites, question, "CERTA") == ("status", "Statut: En production")
    # Words of the description's later sentences are the detail asked, not a name.
    detail = "La plateforme de suivi des vélos compte quoi par station ?"
    assert r.focus(VELIA, detail, "VELIA") == ("description", "Description: Elle compte les locations par station.")


def test_a_question_asking_how_many_keeps_no_line_without_a_figure():
    # "Combien" asks for a quantity: a line without a figure cannot answer
    # it, so the context is empty and the grounded answer the refusal.
    r = router()
    question = "Combien de serveurs hébergent ORBIS ?"
    assert r.focus(SHEET, question, "ORBIS") == ("hosting", "")
    counted = SHEET.replace("Hébergement: Datacenter Nantes-Est", "Hébergement: 2 serveurs, Datacenter Nantes-Est")
    assert r.focus(counted, question, "ORBIS") == ("hosting", "Hébergement: 2 serveurs, Datacenter Nantes-Est")
    assert r.focus(SHEET, "Où est hébergé ORBIS ?", "ORBIS") == ("hosting", "Hébergement: Datacenter Nantes-Est")
    # The digits of a web address (a list's versions, an e-mail) are no figure.
    numbered = SHEET.replace("https://orbis.exemple.fr", "https://orbis2.exemple.fr/v3")
    assert r.focus(numbered, "Combien de visites compte le site web d'ORBIS ?", "ORBIS") == ("website", "")
    # A count the prose says among the question's words answers it instead.
    described = SHEET.replace("Il sert aussi aux véhicules de service.", "Elle est hébergée sur 3 serveurs.")
    assert r.focus(described, question, "ORBIS") == ("description", "Description: Elle est hébergée sur 3 serveurs.")
    assert r.focus(described, "Combien de visites compte le site web d'ORBIS ?", "ORBIS") == ("website", "")
    # The digits inside a word ("x64") are no figure either.
    hosted = described.replace("Datacenter Nantes-Est", "Datacenter x64")
    assert r.focus(hosted, question, "ORBIS") == ("description", "Description: Elle est hébergée sur 3 serveurs.")


def test_a_question_asking_how_many_that_the_router_cannot_place_needs_one_word_of_its_own_on_the_sheet(monkeypatch):
    # "tickets" is the one word of its own and no line says it: no
    # line holds the count. A count the sheet does name keeps its sentence.
    r = router()
    fields = [f.name for f in r.profile.corpus_fields]
    unsure = [("description", ROUTER_UNPLACED - 0.05)] + [(f, 0.01) for f in fields if f != "description"]
    monkeypatch.setattr(r, "ranked", lambda q, names: unsure)
    description = "Description: ORBIS réserve 40 salles et 12 véhicules de service."
    counted = SHEET.replace("Description: ORBIS permet de réserver des salles.\nIl sert aussi aux véhicules de service.", description)
    assert r.focus(counted, "Combien de tickets a ORBIS ?", "ORBIS")[1] == ""
    assert r.focus(counted, "Combien de véhicules pour ORBIS ?", "ORBIS") == ("description", description)


def test_a_question_asking_who_keeps_no_line_without_a_letter():
    # A version, a size or a date names nobody: the context is empty and
    # the grounded answer the refusal; a maintainer's line answers who.
    r, sheets = router_and_sheets(CORPORA / "debian" / "corpus.jsonl")
    assert r.focus(sheets["grep"], "Who wrote the first version of grep?", "grep")[1] == ""
    assert r.focus(sheets["grep"], "Which version of grep is installed?", "grep")[1].startswith("Version: ")
    assert r.focus(sheets["grep"], "Who maintains grep?", "grep")[1].startswith("Maintainer: ")
    # A "who" after a noun is a relative pronoun: the question asks for the version.
    assert r.focus(sheets["grep"], "What is the version of the grep who runs here?", "grep")[1].startswith("Version: ")
    assert asks_who("Le catalogue, c'est qui le contact ?", FR.who_words)
    assert not asks_who("Quelle est la version qui tourne en production ?", FR.who_words)


def test_a_question_asking_who_routed_by_a_word_of_a_label_it_says_in_passing_is_routed_again_without_it():
    # "Python" routes to "Requires-Python" (">=3.8"), which names nobody;
    # without that label's words the question finds the field asked with "who".
    r, sheets = router_and_sheets(CORPORA / "pydist" / "corpus_md")
    question = "Who is behind the Python packaging helpers?"
    assert r.ranked(question, "packaging")[0][0] == "Requires-Python"
    assert r.focus(sheets["packaging"], question, "packaging") == ("Author-email", "Author-email: Donald Stufft <donald@stufft.io>")
    assert r.focus(sheets["attrs"], "Who made attrs for Python classes?", "attrs")[0] == "Author-email"


def test_a_question_asking_for_a_number_keeps_no_line_without_a_digit():
    # A phone number is written in digits: a maintainer's name and e-mail
    # address do not give it, and the grounded answer is the refusal.
    r, sheets = router_and_sheets(CORPORA / "debian" / "corpus.jsonl")
    assert r.focus(sheets["grep"], "What is the maintainer's phone number for grep?", "grep")[1] == ""
    assert r.focus(sheets["grep"], "Who is the maintainer of grep?", "grep")[1].startswith("Maintainer: ")
    assert r.focus(sheets["grep"], "What version number does grep carry?", "grep")[1].startswith("Version: ")


def test_a_question_saying_nothing_but_the_document_keeps_the_router_s_field(monkeypatch):
    # "What is strace?": without its name, no word is left to find the line
    # closest in meaning; the router's field, unsure as it is, answers it.
    r, sheets = router_and_sheets(CORPORA / "debian" / "corpus.jsonl")
    fields = [f.name for f in r.profile.corpus_fields]
    text = r.text_field
    unsure = [(text, ROUTER_SURE - 0.1)] + [(f, 0.02) for f in fields if f != text]
    monkeypatch.setattr(r, "ranked", lambda q, names: unsure)
    field, kept = r.focus(sheets["strace"], "What is strace?", "strace")
    assert field == text and kept.startswith("Description: System call tracer")


def test_a_question_asking_when_keeps_no_line_without_a_date():
    # A version or a size is no answer to "when": the context is empty and
    # the grounded answer the refusal; a line that holds a date answers it.
    r, sheets = router_and_sheets(CORPORA / "debian" / "corpus.jsonl")
    assert r.focus(sheets["curl"], "When did this curl release come out?", "curl")[1] == ""
    # "when" inside a question asking how many does not ask for a date.
    sized = r.focus(sheets["curl"], "How many kilobytes does curl need when it is installed?", "curl")
    assert sized[1].startswith("Installed-Size: ")
    # Nor does "when" after another question word: it joins a clause.
    listed = r.focus(sheets["curl"], "What does curl need on disk when you set it up?", "curl")
    assert listed[1].startswith("Depends: libc6") and not FR.asks_date("Où aller quand ORBIS est en panne ?")
    assert FR.asks_date("ORBIS est en service depuis quand ?") and FR.asks_date("Quand ORBIS a-t-il démarré ?")
    dated = SHEET + "\nMise en service: 12/06/2018"
    assert router().focus(dated, "ORBIS, c'est en service depuis quand ?", "ORBIS") == ("go_live", "Mise en service: 12/06/2018")
    assert router().focus(dated.replace("12/06/2018", "v2"), "ORBIS, c'est en service depuis quand ?", "ORBIS")[1] == ""


def test_a_paraphrase_whose_words_the_sheet_lacks_keeps_its_field():
    # People ask in words no sheet holds ("vieux", "bureaux"): the routed
    # field's line is kept, and the model decides from it.
    r = router()
    assert r.focus(SHEET, "Le vieux ORBIS, il est hébergé où ?", "ORBIS") == ("hosting", "Hébergement: Datacenter Nantes-Est")
    assert r.focus(SHEET, "Le vieux ORBIS, logiciel des bureaux, quel statut ?", "ORBIS")[1] == "Statut: En production"


def test_the_application_name_is_left_out_before_routing():
    # "territoire" pulls a bare question towards the geographic scope; it is the application's name here.
    question = "Le portail de planification du territoire, c'est quelle URL ?"
    assert router().fields([question], ["PLANET Portail de Planification du Territoire"]) == ["website"]


def test_the_words_that_say_the_document_are_left_out_before_routing():
    # "l'outil X", "le logiciel X" say the document, as its name does: no cue to a field.
    r, sheets = router_and_sheets(SAMPLES / "corpus.jsonl")
    assert r.focus(sheets["Marégraphe"], "L'outil Marégraphe, il en est où ?", "Marégraphe") == ("status", "Statut: En production")
    assert r.focus(sheets["Terrabase"], "Le logiciel Terrabase, il en est où ?", "Terrabase") == ("status", "Statut: En développement")


def test_every_part_of_a_hyphenated_name_is_left_out():
    # "URBA-Net" once left "-Net" behind, taken for a web address: a
    # description template was narrowed to a website line the sheet lacks.
    names = "URBA-Net Instruction des Avis d'Urbanisme"
    assert router().fields(["Que fait l'application URBA-Net ?", "urba-net c'est quelle URL ?"], [names] * 2) == ["description", "website"]


def test_a_corpus_of_one_field_routes_every_question_to_it():
    from dyag_mlops.data.corpus import Chunk

    chunks = [Chunk(i, f"Nom : {i.upper()}\nStatut : En test", i, i.upper()) for i in ("orbita", "velo")]
    profile = build_profile(documents(chunks), "fr")
    assert [f.name for f in profile.corpus_fields] == ["status"]
    r = FieldRouter(profile, FR)
    assert r.fields(["Où est hébergé ORBITA ?", "Quel est le statut de VELO ?"], ["ORBITA", "VELO"]) == ["status", "status"]
    assert r.focus("Nom: ORBITA\nStatut: En test", "Quel est le statut de ORBITA ?", "ORBITA") == ("status", "Statut: En test")


def test_a_corpus_label_the_schema_lacks_is_a_field_of_the_router():
    """ "Identifiant", "Briques logicielles" (no schema field) route and narrow like the schema's own."""
    from dyag_mlops.data.corpus import Chunk

    chunks = [
        Chunk("a", "Application: ORBIS\nIdentifiant: 4107\nStatut: En production\nBriques logicielles: PostgreSQL", "a", "ORBIS"),
        Chunk("b", "Application: HYDRA\nIdentifiant: 5521\nStatut: En test", "b", "HYDRA"),
    ]
    r, sheets = router_and_sheets(chunks)
    assert r.profile.schema == "fr"
    sheet = sheets["ORBIS"]
    assert r.fields(["Quel est l'identifiant de ORBIS ?"], ["ORBIS"]) == ["Identifiant"]
    assert r.focus(sheet, "Quel est l'identifiant de ORBIS ?", "ORBIS") == ("Identifiant", "Identifiant: 4107")
    assert r.focus(sheet, "Quelles sont les briques logicielles de ORBIS ?", "ORBIS") == ("Briques logicielles", "Briques logicielles: PostgreSQL")
    assert r.focus(sheet, "Quel est le statut de ORBIS ?", "ORBIS") == ("status", "Statut: En production")


def test_the_schema_s_words_for_an_identifier_name_the_identifier_field():
    """ "ID" is no label of "Identifiant", yet names it; a sheet without an
    identifier keeps none of its lines for such a question."""
    from dyag_mlops.data.corpus import Chunk

    chunks = [
        Chunk("a", "Application: ORBIS\nIdentifiant: 4107\nStatut: En production\nSites web: https://orbis.exemple.fr/", "a", "ORBIS"),
        Chunk("b", "Application: HYDRA\nIdentifiant: 5521\nStatut: En test", "b", "HYDRA"),
        Chunk("c", "Application: VELO\nStatut: En test", "c", "VELO"),
    ]
    r, sheets = router_and_sheets(chunks)
    assert r.focus(sheets["ORBIS"], "id de l'application orbis ?", "ORBIS") == ("Identifiant", "Identifiant: 4107")
    assert r.focus(sheets["ORBIS"], "Donne-moi l'ID de l'appli ORBIS.", "ORBIS") == ("Identifiant", "Identifiant: 4107")
    assert r.focus(sheets["VELO"], "id de l'application velo ?", "VELO") == ("Identifiant", "")


def test_the_roles_a_list_qualifies_its_items_with_route_to_it():
    """ "Qui assure la maîtrise d'œuvre de X ?" asks for the actors, whose
    items the corpus qualifies with that role in brackets, not for the
    contacts that "qui" would otherwise take."""
    r, _ = router_and_sheets(CORPORA / "dyag-invented" / "corpus.jsonl")
    actors = next(f for f in r.profile.fields if f.name == "actors")
    assert {"Maîtrise d'ouvrage", "Maîtrise d'œuvre", "Exploitant"} <= set(actors.shared_values)
    assert r.ranked("Qui porte la maîtrise d'ouvrage d'Alizé ?", "Alizé")[0][0] == "actors"


def test_a_yes_or_no_question_asks_for_the_field_whose_value_it_says():
    """ "Est-elle en production ?" asks for the status, though its words
    point the router to a "Mise en production" date (no status value is
    shared here to pull it back); a question with a question word keeps the
    router's field."""
    from dyag_mlops.data.corpus import Chunk

    chunks = [
        Chunk("a", "Application: ORBIS\nStatut: En production\nMise en production: 02/09/2016\nPortée géographique: Nationale", "a", "ORBIS"),
        Chunk("b", "Application: HYDRA\nStatut: En développement\nMise en production: 01/03/2024", "b", "HYDRA"),
    ]
    r, sheets = router_and_sheets(chunks)
    sheet = sheets["ORBIS"]
    assert r.focus(sheet, "ORBIS est-elle en production ?", "ORBIS") == ("status", "Statut: En production")
    assert r.focus(sheet, "ORBIS, c'est en prod ou en dev ?", "ORBIS") == ("status", "Statut: En production")
    assert r.focus(sheet, "ORBIS est-elle nationale ?", "ORBIS")[0] == "scope"
    assert r.focus(sheet, "Quand ORBIS a-t-elle été mise en production ?", "ORBIS")[0] == "go_live"
    assert r.focus(sheet, "Depuis quand ORBIS est-elle en production ?", "ORBIS")[0] == "go_live"


def test_a_yes_or_no_question_that_says_no_date_is_not_answered_by_one():
    """ "ORBIS, c'est en service ou pas ?" says no status value; its words
    point the router to the "Mise en service" date, but a yes-or-no question
    asks for a state: the router's next field answers it. Said with a date,
    or as the label, the question keeps the date."""
    from dyag_mlops.data.corpus import Chunk

    chunks = [
        Chunk("a", "Application: ORBIS\nStatut: En production\nMise en service: 02/09/2016\nPortée géographique: Nationale", "a", "ORBIS"),
        Chunk("b", "Application: HYDRA\nStatut: En développement\nMise en service: 01/03/2024", "b", "HYDRA"),
    ]
    r, sheets = router_and_sheets(chunks)
    sheet = sheets["ORBIS"]
    assert r.ranked("ORBIS, c'est en service ou pas ?", "ORBIS")[0][0] == "go_live"
    assert r.focus(sheet, "ORBIS, c'est en service ou pas ?", "ORBIS") == ("status", "Statut: En production")
    assert r.focus(sheet, "ORBIS est-elle en service depuis 2016 ?", "ORBIS")[0] == "go_live"
    assert r.focus(sheet, "Mise en service d'ORBIS ?", "ORBIS")[0] == "go_live"


def test_small_words_and_document_nouns_say_no_value():
    """ "moi" of "Décris-moi" is no opening of a linked application's name,
    "le projet X" no status "En projet": the description is asked for."""
    from dyag_mlops.data.corpus import Chunk

    chunks = [
        Chunk("a", "Application: ORBIS\nStatut: En projet\nDescription: ORBIS recense les ouvrages d'art.\nApplications liées: Moisson", "a", "ORBIS"),
        Chunk("b", "Application: HYDRA\nStatut: En production\nApplications liées: Moisson", "b", "HYDRA"),
    ]
    r, sheets = router_and_sheets(chunks)
    sheet = sheets["ORBIS"]
    assert r.focus(sheet, "Décris-moi l'application ORBIS.", "ORBIS")[0] == "description"
    assert r.focus(sheet, "Peux-tu me décrire le projet ORBIS ?", "ORBIS")[0] == "description"
    assert r.focus(sheet, "ORBIS est-elle encore en projet ?", "ORBIS") == ("status", "Statut: En projet")


def test_a_question_asking_when_routed_to_an_undated_field_gets_the_date_field():
    from dyag_mlops.data.corpus import Chunk

    chunks = [
        Chunk("a", "Application: ORBIS\nSites web: https://orbis.exemple.fr/\nMise en production: 27/06/2019", "a", "ORBIS"),
        Chunk("b", "Application: HYDRA\nSites web: https://hydra.exemple.fr/\nMise en production: 01/03/2024", "b", "HYDRA"),
    ]
    r, sheets = router_and_sheets(chunks)
    sheet = sheets["ORBIS"]
    assert r.focus(sheet, "Depuis quand ORBIS est-il en ligne ?", "ORBIS") == ("go_live", "Mise en production: 27/06/2019")
    assert r.focus(sheet, "Quelle est l'adresse web d'ORBIS ?", "ORBIS")[0] == "website"


def test_a_question_asking_why_gets_the_sheet_s_prose():
    """ "Pourquoi ORBIS a-t-il été abandonné ?" says a status value; the
    status line names the state, the description tells the reason."""
    from dyag_mlops.data.corpus import Chunk

    description = "Description: ORBIS gérait les subventions. Il a été abandonné en 2021 faute de crédits."
    chunks = [
        Chunk("a", f"Application: ORBIS\nStatut: Abandonné\n{description}\nMise en service: 02/09/2016", "a", "ORBIS"),
        Chunk("b", "Application: HYDRA\nStatut: En production\nDescription: HYDRA suit les crues.\nMise en service: 01/03/2024", "b", "HYDRA"),
        Chunk("c", "Application: ALTO\nStatut: Abandonné\nDescription: ALTO planifiait les salles.\nMise en service: 05/05/2010", "c", "ALTO"),
    ]
    r, sheets = router_and_sheets(chunks)
    assert r.focus(sheets["ORBIS"], "Pourquoi ORBIS a-t-il été abandonné ?", "ORBIS") == ("description", description)
    assert r.focus(sheets["ORBIS"], "ORBIS a-t-il été abandonné ?", "ORBIS")[0] == "status"


def test_a_question_asking_who_routed_to_a_field_the_sheet_lacks_gets_its_field_asked_about_with_who():
    from dyag_mlops.data.corpus import Chunk

    chunks = [
        Chunk("a", "Name: alpha\nMaintainer: Ann Lee <ann@alpha.org>\nVersion: 1.0", "a", "alpha"),
        Chunk("b", "Name: beta\nAuthor: Bob Ray <bob@beta.org>\nVersion: 2.0", "b", "beta"),
        Chunk("c", "Name: gamma\nMaintainer: Cy Poe <cy@gamma.org>\nAuthor: Di Orr <di@gamma.org>\nVersion: 3.0", "c", "gamma"),
    ]
    docs = documents(chunks)
    profile = build_profile(docs, "en")
    r, sheets = FieldRouter(profile, cached_schema("en")), {d.title: render_sheet(d, profile.name_label) for d in docs}
    question = "who created alpha"
    assert r.ranked(question, "alpha")[0][0] == "Author"
    assert r.focus(sheets["alpha"], question, "alpha") == ("Maintainer", "Maintainer: Ann Lee <ann@alpha.org>")
    # A question saying the label of the field the sheet lacks asks for it: refused.
    assert r.focus(sheets["alpha"], "Who is the author of alpha?", "alpha")[1] == ""


def test_a_question_asking_who_the_router_cannot_place_gets_a_field_asked_about_with_who():
    # dyag's layout: "Qui gère …" leaves the router unsure, and the line
    # closest in meaning is of another field unless the "who" fields decide.
    r, sheets = router_and_sheets(SAMPLES / "corpus.jsonl")
    assert r.focus(sheets["Terrabase"], "Qui gère Terrabase ?", "Terrabase")[0] == "contacts"
    assert r.focus(sheets["Marégraphe"], "Qui s'occupe de Marégraphe ?", "Marégraphe")[0] == "contacts"


def test_a_word_is_said_by_its_inflections_not_by_a_longer_word_of_its_stem():
    from dyag_mlops.retrieval.focus import _same_word

    assert _same_word("nationale", "national") and _same_word("regionales", "regionale") and _same_word("prod", "production")
    assert not _same_word("utilisee", "utilisateur") and not _same_word("maintenu", "maintenance")


def test_a_yes_or_no_question_on_use_asks_for_the_status_not_the_users():
    # "utilisée" is no "Utilisateur", the role the actors' items share.
    r, sheets = router_and_sheets(CORPORA / "dyag-invented" / "corpus.jsonl")
    assert r.focus(sheets["Airelle"], "On utilise encore Airelle de nos jours ?", "Airelle") == ("status", "Statut: En production")


def test_a_label_the_corpus_lacks_finds_the_value_that_says_its_synonym():
    # The French schema's owner field is "MOA" or "Maîtrise d'ouvrage"; dyag's
    # layout has no such field, but its "Acteurs" value says the role.
    r, sheets = router_and_sheets(SAMPLES / "corpus.jsonl")
    assert r.focus(sheets["Marégraphe"], "Qui est la MOA de Marégraphe ?", "Marégraphe") == ("actors", "Acteurs: DGPR/SRNH (Maîtrise d'ouvrage)")


def test_raft_examples_hold_the_asked_line_or_nothing(tmp_path, demo_index):
    from dyag_mlops.config import GenerateConfig
    from dyag_mlops.data.evalset import split_messages
    from dyag_mlops.train import generate
    from dyag_mlops.train.finetune import training_metadata

    config = GenerateConfig(count=120, with_context=demo_index, output=str(tmp_path / "qa.jsonl"), split=False)
    result_path = generate.run(config).files["all"]
    rows = [json.loads(line) for line in open(result_path, encoding="utf-8")]
    # the lines of the sheets the index holds
    lines = {line for sheet in demo_sheets().values() for line in sheet.splitlines()}
    unknown = 0
    for row in rows:
        meta = row["metadata"]
        question, answer = split_messages(row["messages"])
        assert meta["context"] == "oracle"  # no distractor-only contexts: a narrowed line does not say whose it is
        assert meta["focus"] is True and meta["schema"] == "fr"
        # the document's own sheet, narrowed to the asked field (templates are routed to their own field)
        assert meta["context_ids"] == [f"{meta['doc_id']}#{meta['field']}"]
        context = question.split("\n", 1)[1].rsplit("\n\nQuestion : ", 1)[0].removeprefix("[1] ")
        bare_question = question.rsplit("Question : ", 1)[1]
        assert row["messages"] == build_messages(bare_question, [context], answer, schema=FR)
        if answer == UNKNOWN:
            unknown += 1
            assert context == ""  # a field the sheet lacks
        else:
            assert context in lines and answer in context
    assert 0 < unknown < len(rows) / 2
    # the adapter trained on them records it
    assert training_metadata(result_path, "focus") is True
    assert training_metadata(result_path, "schema") == "fr"


def test_rag_and_hybrid_answer_from_the_narrowed_sheet(tiny_model_dir):
    import torch

    from dyag_mlops.systems.models import load_base_model
    from dyag_mlops.systems.predictor import Predictor

    torch.manual_seed(0)
    model, tokenizer, _ = load_base_model(str(tiny_model_dir), device="cpu")
    for system in ("rag", "hybrid"):
        one_sheet = FixedRetriever(Retrieved("app-1", "app-1", "ORBIS", SHEET, 0.9))
        predictor = Predictor(system, model, tokenizer, retriever=one_sheet, top_k=1, max_new_tokens=8, grounded=True, focus=True)
        (messages,), (hits,) = predictor.messages_for(["Quel est le statut de ORBIS ?"])
        assert messages[-1]["content"] == "Contexte :\n[1] Statut: En production\n\nQuestion : Quel est le statut de ORBIS ?"
        assert [h.chunk_id for h in hits] == ["app-1#status"]
        status, go_live = predictor.answer(["Quel est le statut de ORBIS ?", "Quelle est la date de mise en service de ORBIS ?"])
        # a random tiny model may stop after any token of an allowed answer
        assert status.text and (UNKNOWN.startswith(status.text) or status.text in "Statut: En production")
        assert go_live.text and UNKNOWN.startswith(go_live.text)  # nothing else is left to answer with
        assert status.sources == ["app-1#status"]


def orbis_profile():
    """A French corpus whose fullest document (ORBIS) lacks a field another has:
    its worked example holds a refusal."""
    from dyag_mlops.data.corpus import Chunk

    other = "Nom : HYDRA\nStatut : En test\nDate de mise en service : 02/01/2018"
    chunks = [Chunk("orbis", SHEET, "orbis", "ORBIS"), Chunk("hydra", other, "hydra", "HYDRA")]
    return build_profile(documents(chunks), "auto")


def test_the_worked_example_comes_from_the_corpus_and_is_narrowed_like_the_question(tiny_model_dir):
    from dyag_mlops.systems.models import load_base_model
    from dyag_mlops.systems.predictor import Predictor

    profile = orbis_profile()
    turns = profile.example["turns"]
    answers = [turn["answer"] for turn in turns]
    # a sheet of the corpus, as the index renders it, asked field by field
    assert turns[0]["title"] == "ORBIS" and turns[0]["sheet"].splitlines()[0] == "Nom: ORBIS"
    assert UNKNOWN in answers and len(answers) >= 3  # a field a document lacks is answered with the refusal
    assert all(answer == UNKNOWN or answer in turn["sheet"].splitlines() for answer, turn in zip(answers, turns))
    model, tokenizer, _ = load_base_model(str(tiny_model_dir), device="cpu")
    retriever = FixedRetriever(Retrieved("orbis", "orbis", "ORBIS", SHEET, 0.9), profile=profile)
    predictor = Predictor("rag", model, tokenizer, retriever=retriever, grounded=True, worked_example=True, focus=True)
    narrowed = predictor.worked_example_turns(True)
    assert len(narrowed) == 2 * len(turns)
    for turn, (user, assistant) in zip(turns, zip(narrowed[::2], narrowed[1::2])):
        assert assistant["content"] == turn["answer"]
        # the answer is the one line left, or there is none and it does not know:
        # exactly the prompt a real question on a sheet lacking the field gets
        expected_context = "" if turn["answer"] == UNKNOWN else turn["answer"]
        assert user["content"] == user_content(turn["question"], [expected_context], FR)
    # whole sheets: every question with its document's whole sheet
    whole = predictor.worked_example_turns(False)
    assert [m["content"] for m in whole[1::2]] == answers
    assert [m["content"] for m in whole[::2]] == [user_content(t["question"], [t["sheet"]], FR) for t in turns]


def test_a_logged_model_carries_its_schema_file(tmp_path, tiny_model_dir):
    import shutil
    from importlib import resources

    import mlflow

    from dyag_mlops.config import EvaluateConfig, IndexConfig
    from dyag_mlops.config import SystemSpec
    from dyag_mlops.retrieval import rag
    from dyag_mlops.systems.predictor import log_system_model
    from dyag_mlops.tracking import stage_run

    schema = tmp_path / "my_schema.json"
    shutil.copy(resources.files("dyag_mlops") / "resources" / "schemas" / "fr.json", schema)
    index = str(tmp_path / "index")
    rag.run(IndexConfig(index=index, schema=str(schema)))
    with stage_run("evaluate", EvaluateConfig(system="rag")) as tracker:
        uri = log_system_model(tracker, tmp_path, SystemSpec("rag", base_model=str(tiny_model_dir), index=index,
                               top_k=1, max_new_tokens=4, grounded=True, focus=True, schema=str(schema)))
    assert not (tmp_path / "system.json").exists()  # written aside, never next to a user's files
    spec = json.loads(next(Path(mlflow.artifacts.download_artifacts(uri)).rglob("system.json")).read_text())
    assert {k: spec[k] for k in ("grounded", "worked_example", "focus", "schema")} == {
        "grounded": True, "worked_example": False, "focus": True, "schema": str(schema)}
    schema.unlink()  # the served model must not need the user's file
    cached_schema.cache_clear()  # (as in the serving process, which never read it)
    predictor = mlflow.pyfunc.load_model(uri).unwrap_python_model().predictor
    assert predictor.focus and predictor.schema_name.endswith("my_schema.json")
    (messages,), _ = predictor.messages_for(["Quel est le statut de SIRENA ?"])
    assert messages[-1]["content"] == "Contexte :\n[1] Statut: En production\n\nQuestion : Quel est le statut de SIRENA ?"


def test_training_focus_is_whole_sheets_or_unknown_when_not_narrowed(tmp_path, demo_index):
    from dyag_mlops.config import GenerateConfig
    from dyag_mlops.train import generate
    from dyag_mlops.train.finetune import training_metadata

    whole = GenerateConfig(count=20, with_context=demo_index, focus=False, output=str(tmp_path / "w.jsonl"), split=False)
    closed_book = GenerateConfig(count=20, output=str(tmp_path / "c.jsonl"), split=False)
    assert training_metadata(generate.run(whole).files["all"], "focus") is False
    closed = generate.run(closed_book).files["all"]
    assert training_metadata(closed, "focus") is None
    assert training_metadata(closed, "schema") == "fr"
    # a user's dataset records nothing
    user = write_jsonl(tmp_path / "u.jsonl", [{"messages": build_messages("Q ?", answer="A", schema=FR)}] * 2)
    assert training_metadata(user, "focus") is None and training_metadata(user, "schema") is None


@pytest.mark.parametrize("trained, asked, warned", [(False, True, True), (True, False, True), (True, True, False), (None, True, False)])
def test_an_adapter_asked_otherwise_than_trained_is_warned_about(tmp_path, capsys, trained, asked, warned):
    from dyag_mlops.systems.predictor import ADAPTER_MANIFEST, warn_focus_mismatch

    manifest = {} if trained is None else {"focus": trained}
    (tmp_path / ADAPTER_MANIFEST).write_text(json.dumps(manifest))
    warn_focus_mismatch(tmp_path, asked)
    err = capsys.readouterr().err
    assert ("warning" in err) == warned
    if warned:
        assert ("--focus" if trained else "--no-focus") + ")" in err


def test_the_worked_example_is_narrowed_only_where_the_question_s_chunks_are(tiny_model_dir):
    from dyag_mlops.systems.models import load_base_model
    from dyag_mlops.systems.predictor import Predictor

    model, tokenizer, _ = load_base_model(str(tiny_model_dir), device="cpu")
    profile = orbis_profile()
    seen = {}
    for content, narrowed in ((SHEET, True), ("ORBIS réserve des salles.\nDepuis 2016.", False)):
        retriever = FixedRetriever(Retrieved("c", "c", "C", content, 0.9), profile=profile)
        predictor = Predictor("rag", model, tokenizer, retriever=retriever, grounded=True, worked_example=True, focus=True)
        (messages,), _ = predictor.messages_for(["Quel est le statut de ORBIS ?"])
        seen[narrowed] = messages[1:-1]
        assert seen[narrowed] == predictor.worked_example_turns(narrowed)
    sheet = profile.example["turns"][0]["sheet"]
    assert seen[True] != seen[False] and sheet in seen[False][0]["content"]
    assert sheet not in seen[True][0]["content"]


def test_only_sheets_of_the_corpus_are_narrowed():
    r = router()
    assert r.entries(SHEET) is not None
    assert r.entries(SHEET.replace(": ", " : ")) is not None
    assert r.entries("ORBIS est un outil de réservation.\nIl date de 2016.") is None
    # lines whose labels the corpus does not know are no sheet of it
    assert r.entries("Foo: 1\nBar: 2\nBaz: 3") is None
