"""VQA answer strings: the official normalisation, the answer vocabulary and soft answer targets.

`normalize_answer` reproduces what the official VQA evaluator (GT-Vision-Lab/VQA, `vqaEval.py`)
does to a predicted answer, quirks included, so that the vocabulary a model is trained on, the
answers it predicts and the accuracy `glipv2.evaluation.vqa` reports all agree with it. Pure
Python: importable by data, evaluation and training code alike.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

# the official contraction table (keys are words after lower-casing; the values mix straight and
# curly apostrophes exactly as the official table does, and its capitalised keys "Im", "Ive",
# "Id’ve", "I’dve" never match a lower-cased word: kept as is, like the evaluator)
_CONTRACTIONS_TABLE = """
aint ain't  arent aren't  cant can't  couldve could've  couldnt couldn't
couldn'tve couldn’t’ve  couldnt’ve couldn’t’ve  didnt didn’t  doesnt doesn’t  dont don’t
hadnt hadn’t  hadnt’ve hadn’t’ve  hadn'tve hadn’t’ve  hasnt hasn’t  havent haven’t  hed he’d
hed’ve he’d’ve  he’dve he’d’ve  hes he’s  howd how’d  howll how’ll  hows how’s  Id’ve I’d’ve
I’dve I’d’ve  Im I’m  Ive I’ve  isnt isn’t  itd it’d  itd’ve it’d’ve  it’dve it’d’ve  itll it’ll
let’s let’s  maam ma’am  mightnt mightn’t  mightnt’ve mightn’t’ve  mightn’tve mightn’t’ve
mightve might’ve  mustnt mustn’t  mustve must’ve  neednt needn’t  notve not’ve  oclock o’clock
oughtnt oughtn’t  ow’s’at ’ow’s’at  ’ows’at ’ow’s’at  ’ow’sat ’ow’s’at  shant shan’t
shed’ve she’d’ve  she’dve she’d’ve  she’s she’s  shouldve should’ve  shouldnt shouldn’t
shouldnt’ve shouldn’t’ve  shouldn’tve shouldn’t’ve  somebody’d somebodyd  somebodyd’ve somebody’d’ve
somebody’dve somebody’d’ve  somebodyll somebody’ll  somebodys somebody’s  someoned someone’d
someoned’ve someone’d’ve  someone’dve someone’d’ve  someonell someone’ll  someones someone’s
somethingd something’d  somethingd’ve something’d’ve  something’dve something’d’ve
somethingll something’ll  thats that’s  thered there’d  thered’ve there’d’ve  there’dve there’d’ve
therere there’re  theres there’s  theyd they’d  theyd’ve they’d’ve  they’dve they’d’ve
theyll they’ll  theyre they’re  theyve they’ve  twas ’twas  wasnt wasn’t  wed’ve we’d’ve
we’dve we’d’ve  weve we've  werent weren’t  whatll what’ll  whatre what’re  whats what’s
whatve what’ve  whens when’s  whered where’d  wheres where's  whereve where’ve  whod who’d
whod’ve who’d’ve  who’dve who’d’ve  wholl who’ll  whos who’s  whove who've  whyll why’ll
whyre why’re  whys why’s  wont won’t  wouldve would’ve  wouldnt wouldn’t  wouldnt’ve wouldn’t’ve
wouldn’tve wouldn’t’ve  yall y’all  yall’ll y’all’ll  y’allll y’all’ll  yall’d’ve y’all’d’ve
y’alld’ve y’all’d’ve  y’all’dve y’all’d’ve  youd you’d  youd’ve you’d’ve  you’dve you’d’ve
youll you’ll  youre you’re  youve you’ve
"""
_words = _CONTRACTIONS_TABLE.split()
CONTRACTIONS: dict[str, str] = dict(zip(_words[0::2], _words[1::2]))
del _words

NUMBER_WORDS: dict[str, str] = {
    word: str(value)
    for value, word in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    )
}
NUMBER_WORDS["none"] = "0"
ARTICLES = frozenset({"a", "an", "the"})
# the characters the official evaluator removes (or turns into spaces); "." and "!" are not
# among them: periods go through the period regex below, "!" and "-" stay
PUNCTUATION = (";", ":", "/", "'", "[", "]", '"', "(", ")", "=", "+", "\\", "_", ">", "<", "@", "`", ",", "?")
# "(?!<=\d)" is the official typo for the look-behind "(?<!\d)": a look-ahead for the text "<=" and
# a digit, which never matches at a ".", so every period not followed by a digit goes ("5." -> "5",
# "2.5" stays). The official call also passes re.UNICODE as `count`: at most 32 periods are removed.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_PERIOD_COUNT = int(re.UNICODE)
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")


def process_punctuation(text: str) -> str:
    """The official punctuation step. Each mark of `PUNCTUATION` is deleted when it touches a space
    somewhere in `text` (or when `text` has a digit,digit such as "1,000"), else replaced by a space
    ("don't" -> "don t", "yes?" -> "yes "); then the period regex, quirks reproduced: every period
    not followed by a digit is removed (the official look-behind typo), at most 32 of them (the
    official `re.UNICODE` passed as the count)."""
    out = text
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        if delete_all or mark + " " in text or " " + mark in text:  # tested on the input, as officially
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """The official word step: lower-case, split on whitespace, number words none/zero…ten -> 0…10,
    articles a/an/the dropped, then the official contraction table ("dont" -> "don’t", curly
    apostrophe as in the table), words joined by single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(text: str) -> str:
    """What the official evaluator does to a predicted answer: newlines and tabs -> spaces, strip,
    `process_punctuation`, `process_digit_article`."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def build_answer_vocabulary(answer_lists: Iterable[Sequence[str]], min_count: int = 1) -> list[str]:
    """The answer classes of a VQA head: the normalised answers given for at least `min_count`
    questions, most frequent first, ties alphabetically (deterministic).

    `answer_lists` holds one question's annotator answers each. An answer counts once per question
    in which at least one annotator gave it (as the bottom-up-attention recipe counts, so a question
    whose ten annotators agree does not outweigh ten questions); empty answers are skipped."""
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    counts: Counter[str] = Counter()
    for answers in answer_lists:
        if isinstance(answers, str):
            raise TypeError("answer_lists holds one sequence of answers per question, not strings")
        counts.update({a for a in (normalize_answer(x) for x in answers) if a})
    kept = [(n, a) for a, n in counts.items() if n >= min_count]
    return [a for _, a in sorted(kept, key=lambda item: (-item[0], item[1]))]


def answer_scores(answers: Sequence[str], index: Mapping[str, int]) -> dict[int, float]:
    """Soft VQA targets of one question: vocabulary index -> min(1, annotators who gave that answer
    / 3), answers compared after `normalize_answer`; answers outside `index` are ignored."""
    if isinstance(answers, str):
        raise TypeError("answers is a sequence of annotator answers, not one string")
    counts = Counter(normalize_answer(a) for a in answers)
    return {index[a]: min(1.0, n / 3) for a, n in counts.items() if a in index}
