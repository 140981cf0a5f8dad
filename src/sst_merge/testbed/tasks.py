"""The testbed's utility tasks: short instructions over letters and digits with one exact answer.

Each task draws operands (a tuple of short tokens) and answers them with a pure function. Items are
assigned to train/val/test by a hash of the task name and the operands, so a test item's operands
never occur in training (held-out combinations), whatever the seed; the seed only decides which
items are drawn. The order of `TASKS` is fixed: a build with N experts uses the first N tasks.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

LETTERS = list(string.ascii_lowercase)
DIGITS = list(string.digits)
VOWELS = set("aeiou")
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# Share of the operand space that each held-out split gets (by hash bucket out of 100).
TEST_BUCKETS = 15
VAL_BUCKETS = 10

Operands = tuple[str, ...]


@dataclass(frozen=True)
class Task:
    """One utility task: `instruction` prefixes the operands in the prompt; `solve` gives the answer."""

    name: str
    instruction: str
    draw: Callable[[random.Random], Operands]
    solve: Callable[[Operands], str]

    def prompt(self, operands: Operands) -> str:
        """The user message for `operands`."""
        return f"{self.instruction} : {' '.join(operands)}"


def _letters(lo: int, hi: int) -> Callable[[random.Random], Operands]:
    return lambda rng: tuple(rng.choice(LETTERS) for _ in range(rng.randint(lo, hi)))


def _digits(lo: int, hi: int) -> Callable[[random.Random], Operands]:
    return lambda rng: tuple(rng.choice(DIGITS) for _ in range(rng.randint(lo, hi)))


def _with_vowel(rng: random.Random) -> Operands:
    while True:
        ops = _letters(3, 6)(rng)
        if any(c in VOWELS for c in ops):
            return ops


def _probe_and_list(rng: random.Random) -> Operands:
    # Half the lists contain the probe letter so yes/no answers are balanced.
    probe = rng.choice(LETTERS)
    items = list(_letters(3, 5)(rng))
    if rng.random() < 0.5 and probe not in items:
        items[rng.randrange(len(items))] = probe
    return (probe, "|", *items)


def _shift(c: str, k: int) -> str:
    return LETTERS[(LETTERS.index(c) + k) % 26]


def _join(items: Operands | list[str]) -> str:
    return " ".join(items)


TASKS: list[Task] = [
    Task("first_item", "first item", _letters(3, 6), lambda o: o[0]),
    Task("last_item", "last item", _letters(3, 6), lambda o: o[-1]),
    Task("uppercase", "uppercase", _letters(3, 5), lambda o: _join([c.upper() for c in o])),
    Task("spell_digits", "spell the digits", _digits(2, 4), lambda o: _join([DIGIT_WORDS[int(d)] for d in o])),
    Task("next_letter", "next letters", _letters(3, 5), lambda o: _join([_shift(c, 1) for c in o])),
    Task("drop_first", "drop the first", _letters(3, 6), lambda o: _join(o[1:])),
    Task("count_items", "how many items", _letters(1, 9), lambda o: str(len(o))),
    Task("max_digit", "largest digit", _digits(3, 6), lambda o: max(o)),
    Task("second_item", "second item", _letters(3, 6), lambda o: o[1]),
    Task("prev_letter", "previous letters", _letters(3, 5), lambda o: _join([_shift(c, -1) for c in o])),
    Task("digit_plus_one", "add one to each digit", _digits(3, 5),
         lambda o: _join([str((int(d) + 1) % 10) for d in o])),
    Task("min_digit", "smallest digit", _digits(3, 6), lambda o: min(o)),
    Task("number_parity", "is the number even or odd", _digits(2, 5),
         lambda o: "even" if int(o[-1]) % 2 == 0 else "odd"),
    Task("read_digits", "write as digits", lambda rng: tuple(DIGIT_WORDS[int(d)] for d in _digits(2, 4)(rng)),
         lambda o: _join([str(DIGIT_WORDS.index(w)) for w in o])),
    Task("drop_last", "drop the last", _letters(3, 6), lambda o: _join(o[:-1])),
    Task("swap_ends", "swap first and last", _letters(3, 6), lambda o: _join((o[-1], *o[1:-1], o[0]))),
    Task("first_two", "first two items", _letters(3, 6), lambda o: _join(o[:2])),
    Task("last_two", "last two items", _letters(3, 6), lambda o: _join(o[-2:])),
    Task("lowercase", "lowercase", lambda rng: tuple(c.upper() for c in _letters(3, 5)(rng)),
         lambda o: _join([c.lower() for c in o])),
    Task("letter_positions", "alphabet positions", _letters(2, 4),
         lambda o: _join([str(LETTERS.index(c) + 1) for c in o])),
    Task("say_twice", "say it twice", _letters(2, 4), lambda o: _join(o + o)),
    Task("double_each", "double each item", _letters(2, 4), lambda o: _join([c for c in o for _ in (0, 1)])),
    Task("rotate_left", "rotate left", _letters(3, 6), lambda o: _join(o[1:] + o[:1])),
    Task("reverse", "reverse the list", _letters(3, 5), lambda o: _join(o[::-1])),
    Task("contains_letter", "is the letter in the list", _probe_and_list,
         lambda o: "yes" if o[0] in o[2:] else "no"),
    Task("every_other", "every other item", _letters(3, 7), lambda o: _join(o[::2])),
    Task("keep_vowels", "keep the vowels", _with_vowel, lambda o: _join([c for c in o if c in VOWELS])),
    Task("count_vowels", "how many vowels", _letters(2, 7), lambda o: str(sum(c in VOWELS for c in o))),
]

TASK_NAMES = [t.name for t in TASKS]


def split_of(task: str, operands: Operands) -> str:
    """The split ("train", "val" or "test") that owns `operands` of `task`: a fixed hash partition."""
    bucket = int.from_bytes(hashlib.sha256(f"{task}|{_join(operands)}".encode()).digest()[:4], "big") % 100
    if bucket < TEST_BUCKETS:
        return "test"
    if bucket < TEST_BUCKETS + VAL_BUCKETS:
        return "val"
    return "train"


def task_rows(task: Task, sizes: dict[str, int], seed: int) -> dict[str, list[dict[str, str]]]:
    """Distinct items of `task` per split, `sizes[split]` of each, drawn with a generator seeded by `seed`.

    Rows are ``{"prompt", "response"}``; no operands are shared between splits (see `split_of`).
    """
    rng = random.Random(f"{seed}|{task.name}")
    rows: dict[str, list[dict[str, str]]] = {split: [] for split in sizes}
    seen: set[Operands] = set()
    for _ in range(200 * sum(sizes.values())):
        if all(len(rows[s]) >= n for s, n in sizes.items()):
            break
        operands = task.draw(rng)
        split = split_of(task.name, operands)
        if operands in seen or split not in rows or len(rows[split]) >= sizes[split]:
            continue
        seen.add(operands)
        rows[split].append({"prompt": task.prompt(operands), "response": task.solve(operands)})
    return rows
