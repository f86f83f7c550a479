"""One real-looking row per task, shaped exactly as the hub data sets give them.

Notebooks use them to show every task's prompt without hub access; tests use them
as fixtures. Texts are the public data sets' own first rows (or close to them).
"""

SAMPLE_ROWS: dict[str, dict] = {
    "cola": {"sentence": "Our friends won't buy this analysis, let alone the next one we propose.", "label": 1, "idx": 0},
    "sst2": {"sentence": "hide new secretions from the parental units ", "label": 0, "idx": 0},
    "mrpc": {
        "sentence1": 'Amrozi accused his brother , whom he called " the witness " , of deliberately distorting his evidence .',
        "sentence2": 'Referring to him as only " the witness " , Amrozi accused his brother of deliberately distorting his evidence .',
        "label": 1, "idx": 0,
    },
    "qqp": {
        "question1": "How is the life of a math student? Could you describe your own experiences?",
        "question2": "Which level of prepration is enough for the exam jlpt5?",
        "label": 0, "idx": 0,
    },
    "stsb": {"sentence1": "A plane is taking off.", "sentence2": "An air plane is taking off.", "label": 5.0, "idx": 0},
    "mnli": {
        "premise": "Conceptually cream skimming has two basic dimensions - product and geography.",
        "hypothesis": "Product and geography are what make cream skimming work. ",
        "label": 1, "idx": 0,
    },
    "qnli": {
        "question": "When did the third Digimon series begin?",
        "sentence": "Unlike the two seasons before it and most of the seasons that followed, Digimon Tamers takes a darker and more realistic approach to its story featuring Digimon who do not reincarnate after their deaths and more complex character development in the original Japanese.",
        "label": 1, "idx": 0,
    },
    "rte": {
        "sentence1": "No Weapons of Mass Destruction Found in Iraq Yet.",
        "sentence2": "Weapons of Mass Destruction Found in Iraq.",
        "label": 1, "idx": 0,
    },
    "wnli": {
        "sentence1": "I stuck a pin through a carrot. When I pulled the pin out, it had a hole.",
        "sentence2": "The carrot had a hole.",
        "label": 1, "idx": 0,
    },
    "ax": {
        "premise": "The cat sat on the mat.",
        "hypothesis": "The cat did not sit on the mat.",
        "label": 2, "idx": 0,
    },
    "boolq": {
        "question": "do iran and afghanistan speak the same language",
        "passage": "Persian language -- Persian (/ˈpɜːrʒən, -ʃən/), also known by its endonym Farsi, is one of the Western Iranian languages within the Indo-Iranian branch of the Indo-European language family.",
        "idx": 0, "label": 1,
    },
    "cb": {
        "premise": "It was a complex language. Not written down but handed down. One might say it was peeled down.",
        "hypothesis": "the language was peeled down",
        "idx": 0, "label": 0,
    },
    "copa": {
        "premise": "My body cast a shadow over the grass.",
        "choice1": "The sun was rising.", "choice2": "The grass was cut.",
        "question": "cause", "idx": 0, "label": 0,
    },
    "multirc": {
        "paragraph": "While this process moved along, diplomacy continued its rounds. Direct pressure on the Taliban had proved unsuccessful.",
        "question": "What did the high-level effort to persuade Pakistan include?",
        "answer": "Children, Gerd, or Dorian Popa",
        "idx": {"paragraph": 0, "question": 0, "answer": 0}, "label": 0,
    },
    "record": {
        "passage": "The harrowing stories of women and children locked up for so-called 'moral crimes' in Afghanistan's notorious female prison have been revealed after cameras were allowed inside.\n@highlight\nRaped women are being locked up in Afghanistan",
        "query": "Most of the 40 women in @placeholder's prison were jailed for 'moral crimes'",
        "entities": ["Afghanistan", "Mariam"],
        "entity_spans": {"text": ["Afghanistan", "Mariam"], "start": [86, 200], "end": [97, 206]},
        "answers": ["Afghanistan"],
        "idx": {"passage": 0, "query": 0},
    },
    "superglue-rte": {
        "premise": "No Weapons of Mass Destruction Found in Iraq Yet.",
        "hypothesis": "Weapons of Mass Destruction Found in Iraq.",
        "idx": 0, "label": 1,
    },
    "wic": {
        "word": "place", "sentence1": "Do you want to come over to my place later?",
        "sentence2": "A political system with no place for the less prominent groups.",
        "start1": 31, "start2": 27, "end1": 36, "end2": 32, "idx": 0, "label": 0,
    },
    "wsc": {
        "text": "Mark told Pete many lies about himself, which Pete included in his book. He should have been more skeptical.",
        "span1_index": 0, "span2_index": 13, "span1_text": "Mark", "span2_text": "He", "idx": 0, "label": 0,
    },
    "axb": {
        "sentence1": "The cat sat on the mat.", "sentence2": "The cat did not sit on the mat.",
        "idx": 0, "label": 1,
    },
    "axg": {
        "premise": "The nurse notified the patient that his shift would be ending in an hour.",
        "hypothesis": "The nurse's shift would be ending in an hour.",
        "idx": 0, "label": 0,
    },
    "movie-snippets": {"sentence": "Effective but too tepid biopic", "label": 0, "idx": 3, "rating": -0.6},
}
