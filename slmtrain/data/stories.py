"""Built-in offline corpus: seeded, grammar-generated children's stories.

Every story is produced by a small hand-written grammar (all text here is original to this
project). A story picks one plot skeleton, a cast (hero, friend, grown-up, pet, ...) and fills
sentence templates, so a tiny model sees coherent little narratives with a modest vocabulary.

Train and validation splits must come from *disjoint seeds* (e.g. seed and seed + 1): they share
the grammar but not the random draws, so valid measures generalisation over surface forms.

Template mini-language, parsed once at import:
  * one line = one sentence slot; " | " separates alternatives; a line starting "| " adds more
    alternatives to the slot above;
  * "?" prefix: optional slot (kept half the time); "~" prefix: slots whose order is shuffled
    within the paragraph;
  * "/" starts a new paragraph, "/|" an alternative version of the paragraph just started;
  * "[a|b]" inline choice; "{key}" a cast field; "{Key}" the same, capitalised;
  * "@O" a shared opening line, "@C" a shared closing line.
"""

from __future__ import annotations

import random
import re

from slmtrain.data.story_text import (  # noqa: F401 - tables the grammar fills from
    _AGES,
    _BOYS,
    _BREAKABLES,
    _CLOSINGS,
    _DREAMS,
    _FEARS,
    _FOODS,
    _GAMES,
    _GIFTS,
    _GIRLS,
    _GOOD_DREAMS,
    _HOBBIES,
    _OPENINGS,
    _PARENTS,
    _PAST,
    _PETS,
    _PET_BOYS,
    _PET_GIRLS,
    _PET_SPOTS,
    _PLACES,
    _ROLES,
    _SEEDS,
    _SKELETON_SRC,
    _SKILLS,
    _SNACKS,
    _SPOTS,
    _STRANGERS,
    _TIMES,
    _TOYS,
    _TOY_ADJ,
    _TRAITS,
    _TROUBLES,
    _WEATHER,
    _WILD,
)
# Gender follows the name so casts can be pinned (tests) by narrowing these pools.
_NAMES, _PET_NAMES = _BOYS + _GIRLS, _PET_BOYS + _PET_GIRLS


_CHOICE = re.compile(r"\[([^\[\]]*)\]")
_Slot = tuple[str, list[str]]


def _parse(src: str) -> list[list[list[_Slot]]]:
    """Template text -> paragraphs -> alternative versions -> sentence slots."""
    paras: list[list[list[_Slot]]] = [[[]]]
    for line in src.strip().splitlines():
        line = line.strip()
        if line == "/":
            paras.append([[]])
        elif line == "/|":
            paras[-1].append([])
        elif line.startswith("| "):
            paras[-1][-1][-1][1].extend(line[2:].split(" | "))
        else:
            # "~?" marks a shuffled slot that is also optional; "?" alone may precede "@C".
            flags = re.match(r"[?~]*", line).group()
            body = line[len(flags):]
            alts = {"@O": _OPENINGS, "@C": _CLOSINGS}.get(body) or body.split(" | ")
            paras[-1][-1].append((flags, list(alts)))
    return paras


SKELETONS: tuple[str, ...] = tuple(_SKELETON_SRC)
_FIX_KEY = {"fear": "fix_f", "baking": "fix_b"}
_PARSED = {name: _parse(src) for name, src in _SKELETON_SRC.items()}


def _rows(table: str) -> list[list[str]]:
    return [row.split(" ; ") for row in table.splitlines()]


_TABLES = {name: _rows(t) for name, t in [("place", _PLACES), ("trouble", _TROUBLES),
           ("pet", _PETS), ("stranger", _STRANGERS), ("fear", _FEARS), ("skill", _SKILLS),
           ("seed", _SEEDS), ("food", _FOODS)]}


def _an(phrase: str) -> str:
    # Spelling-based rule; the word lists avoid the exceptions ("hour", "unicorn").
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _fill(text: str, rng: random.Random, ctx: dict[str, str]) -> str:
    return _CHOICE.sub(lambda m: rng.choice(m.group(1).split("|")), text).format_map(ctx)


def _pronouns(prefix: str, girl: bool) -> dict[str, str]:
    words = ("she", "her", "her", "herself", "girl") if girl else ("he", "his", "him", "himself",
                                                                  "boy")
    return dict(zip((prefix + k for k in ("he", "his", "him", "self", "kid")), words))


class _Cast(dict[str, str]):
    """Template fields; "{He}" / "{Fix}" at a sentence start resolve to the capitalised value."""

    def __missing__(self, key: str) -> str:
        if not key[:1].isupper():
            raise KeyError(key)
        value: str = self[key[0].lower() + key[1:]]
        return value[:1].upper() + value[1:]


def _context(rng: random.Random) -> _Cast:
    """Draw one cast and setting; every template field is defined so any skeleton can render."""
    name = rng.choice(_NAMES)
    friend = rng.choice([x for x in _NAMES if x != name])
    parent = rng.choice(_PARENTS)
    toy, adj = rng.choice(_TOYS), rng.choice(_TOY_ADJ)
    ctx = _Cast(
        n=name, f=friend, p=parent, toy=toy, dtoy=f"{adj} {toy}", a_toy=_an(f"{adj} {toy}"),
        wx=rng.choice(_WEATHER), tod=rng.choice(_TIMES), trait=rng.choice(_TRAITS),
        hobby=rng.choice(_HOBBIES), age=rng.choice(_AGES), gift=rng.choice(_GIFTS),
        breakable=rng.choice(_BREAKABLES), game=rng.choice(_GAMES), snack=rng.choice(_SNACKS),
        role=rng.choice(_ROLES), pn=rng.choice(_PET_NAMES), gooddream=rng.choice(_GOOD_DREAMS),
        pspot=rng.choice(_PET_SPOTS))
    ctx.update(_pronouns("", name in _GIRLS))
    ctx.update(_pronouns("f", friend in _GIRLS))
    ctx.update(_pronouns("p", parent in ("Mom", "Grandma")))
    ctx.update(_pronouns("a", ctx["pn"] in _PET_GIRLS))
    ctx["wa"], ctx["wmove"] = rng.choice(_WILD)
    ctx["a_wa"] = _an(ctx["wa"])
    row = {k: rng.choice(t) for k, t in _TABLES.items()}
    ctx["place"], ctx["sight"], ctx["act"], ctx["find"] = row["place"]
    verb, _, rest = ctx["act"].partition(" ")
    ctx["actp"] = f"{_PAST[verb]} {rest}".strip()
    ctx["trouble"], ctx["fix_a"] = row["trouble"]
    ctx["pet"], ctx["look"], ctx["like"], ctx["psound"] = row["pet"]
    ctx["a_pet"] = _an(ctx["pet"])
    ctx["wn"], ctx["whe"], ctx["whis"], ctx["whim"], ctx["wdet"] = row["stranger"]
    ctx["a_wn"] = _an(ctx["wn"])
    ctx["seed"], ctx["seedit"], ctx["plant"] = row["seed"]
    ctx["food"], ctx["mishap"], ctx["result"], ctx["fix_b"] = row["food"]
    ctx["spot"], ctx["dream"] = rng.choice(_SPOTS), rng.choice(_DREAMS)
    # Second pass: some drawn fields mention the cast ("{his} rain boot", "{P} held ...").
    fear, skill = row["fear"], row["skill"]
    ctx["fear"], ctx["why"], ctx["scene"], ctx["fix_f"], ctx["after"] = fear
    ctx["skill"], ctx["fail"], ctx["help"], ctx["succ"] = skill
    for key in ("spot", "dream", "plant", "mishap", "result", "fix_b", "why", "scene", "fix_f",
                "after", "skill", "fail", "help", "succ"):
        ctx[key] = _fill(ctx[key], rng, ctx)
    return ctx


def _sentence_case(text: str) -> str:
    i = 1 if text.startswith('"') else 0
    return text[:i] + text[i:i + 1].upper() + text[i + 1:]


def _story(rng: random.Random) -> tuple[str, str]:
    """One story: (skeleton name, text). Not deduplicated or length-checked."""
    name = rng.choice(SKELETONS)
    ctx = _context(rng)
    # Three skeletons share the template word "{fix}"; each means its own table's remedy.
    ctx["fix"] = ctx[_FIX_KEY.get(name, "fix_a")]
    paragraphs = []
    for versions in _PARSED[name]:
        out: list[str] = []
        shuffled: list[int] = []
        for flags, alts in rng.choice(versions):
            if "?" in flags and rng.random() < 0.5:
                continue
            if "~" in flags:
                shuffled.append(len(out))
            out.append(_sentence_case(_fill(rng.choice(alts), rng, ctx)))
        moved = [out[i] for i in shuffled]
        rng.shuffle(moved)
        for i, sentence in zip(shuffled, moved):
            out[i] = sentence
        if out:
            paragraphs.append(" ".join(out))
    return name, "\n".join(paragraphs)


def generate_stories(count: int, seed: int) -> list[str]:
    """Return `count` distinct stories, deterministic in (count, seed).

    Use disjoint seeds for train and validation text. Stories are 60-250 words of ASCII prose,
    paragraphs joined by a single newline.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    # Zig-zag map: random.Random(-s) equals random.Random(s), but distinct seeds must differ.
    rng = random.Random(2 * seed if seed >= 0 else -2 * seed - 1)
    seen: set[str] = set()
    stories: list[str] = []
    while len(stories) < count:
        _, text = _story(rng)
        if text not in seen and 60 <= len(text.split()) <= 250:
            seen.add(text)
            stories.append(text)
    return stories
