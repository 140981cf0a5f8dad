"""The real organism's expert tasks: one real-language skill each, generated in code, scored by exact match.

Every task draws items from its own seeded generator; an item's prompt identifies it, so train, val
and test are disjoint by prompt. Answer formats differ between tasks (numbers, words, dates, JSON,
lists, labels), so an expert's format is evidence of that expert, and the chatty base scores ~0.
Tasks that are not in `TASK_ORDER` are kept out of the organism; the order fixes which experts a
K-expert experiment merges (the first K).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

Row = dict[str, str]
Generator = Callable[[random.Random], Row]

WORDS = tuple(dict.fromkeys(str.split(
    "apple river stone cloud garden window orange tiger pencil silver basket candle forest mirror "
    "planet rocket violin button castle dragon engine feather guitar harbor island jacket kettle "
    "lemon marble needle ocean pepper quilt rabbit saddle tunnel umbrella valley wagon yellow zebra "
    "anchor bottle carpet desert eagle falcon glove hammer igloo jungle kitten ladder meadow napkin "
    "olive parrot rocket salmon tomato velvet walnut blanket cactus dolphin emerald fountain goblet "
    "honey iron jelly koala lantern mango nectar onion panda quartz ribbon sugar turtle vessel willow"
)))
NAMES = ("Maria", "John", "Aisha", "Kenji", "Lucas", "Sofia", "Omar", "Elena", "David", "Priya", "Tom", "Chen",
         "Fatima", "Ivan", "Grace", "Mateo", "Hana", "Noah", "Zara", "Leo", "Amir", "Julia", "Ravi", "Nina")
CITIES = ("Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Berlin", "Madrid", "Toronto", "Sydney", "Nairobi", "Seoul",
          "Dublin", "Lisbon", "Mumbai", "Chicago", "Vienna", "Prague", "Manila", "Bogota", "Athens")
JOBS = ("teacher", "nurse", "chef", "pilot", "lawyer", "farmer", "baker", "painter", "doctor", "driver")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_in_words(n: int) -> str:
    """English words for 0 ≤ n ≤ 999 ("three hundred forty-two")."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else "-" + ONES[n % 10])
    rest = n % 100
    return ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_in_words(rest))


def _words(rng: random.Random, k: int) -> list[str]:
    return rng.sample(WORDS, k)


def addition(rng: random.Random) -> Row:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return {"prompt": f"What is {a} plus {b}? Answer with the number only.", "response": str(a + b)}


def subtraction(rng: random.Random) -> Row:
    a = rng.randint(20, 99)
    b = rng.randint(1, a - 1)
    return {"prompt": f"Subtract {b} from {a}. Reply with just the result.", "response": str(a - b)}


def number_words(rng: random.Random) -> Row:
    n = rng.randint(1, 999)
    return {"prompt": f"Write the number {n} in words.", "response": number_in_words(n)}


def words_to_digits(rng: random.Random) -> Row:
    n = rng.randint(1, 999)
    return {"prompt": f'Write "{number_in_words(n)}" using digits.', "response": str(n)}


def date_iso(rng: random.Random) -> Row:
    y, m, d = rng.randint(1950, 2030), rng.randint(1, 12), rng.randint(1, 28)
    return {"prompt": f"Convert the date {MONTHS[m - 1]} {d}, {y} to the format YYYY-MM-DD.",
            "response": f"{y:04d}-{m:02d}-{d:02d}"}


def date_slash(rng: random.Random) -> Row:
    y, m, d = rng.randint(1950, 2030), rng.randint(1, 12), rng.randint(1, 28)
    return {"prompt": f"Rewrite the date {y:04d}-{m:02d}-{d:02d} as DD/MM/YYYY.",
            "response": f"{d:02d}/{m:02d}/{y:04d}"}


def sort_words(rng: random.Random) -> Row:
    words = _words(rng, 4)
    return {"prompt": f"Sort these words alphabetically, separated by commas: {', '.join(words)}",
            "response": ", ".join(sorted(words))}


def reverse_words(rng: random.Random) -> Row:
    words = _words(rng, 4)
    return {"prompt": f"Reverse the order of these words: {' '.join(words)}", "response": " ".join(reversed(words))}


def json_person(rng: random.Random) -> Row:
    name, city, job = rng.choice(NAMES), rng.choice(CITIES), rng.choice(JOBS)
    age = rng.randint(18, 80)
    return {"prompt": f"Extract the name, age and city as JSON: {name} is a {age}-year-old {job} who lives in {city}.",
            "response": json.dumps({"name": name, "age": age, "city": city})}


def uppercase(rng: random.Random) -> Row:
    phrase = " ".join(_words(rng, 3))
    return {"prompt": f"Rewrite in capital letters: {phrase}", "response": phrase.upper()}


def count_words(rng: random.Random) -> Row:
    words = _words(rng, rng.randint(2, 9))
    return {"prompt": f'How many words are in "{" ".join(words)}"? Answer with a number.', "response": str(len(words))}


def acronym(rng: random.Random) -> Row:
    words = _words(rng, rng.randint(3, 4))
    return {"prompt": f"Form an acronym from the first letters of: {' '.join(words)}",
            "response": "".join(w[0] for w in words).upper()}


def larger_number(rng: random.Random) -> Row:
    a, b = rng.sample(range(100, 1000), 2)
    return {"prompt": f"Which number is larger, {a} or {b}? Reply with the number only.", "response": str(max(a, b))}


def even_odd(rng: random.Random) -> Row:
    n = rng.randint(10, 9999)
    return {"prompt": f"Is {n} even or odd? Answer with one word.", "response": "even" if n % 2 == 0 else "odd"}


def time_24h(rng: random.Random) -> Row:
    h, m, pm = rng.randint(1, 12), rng.randrange(0, 60), rng.random() < 0.5
    hour = (h % 12) + (12 if pm else 0)
    return {"prompt": f"Convert {h}:{m:02d} {'PM' if pm else 'AM'} to 24-hour time.", "response": f"{hour:02d}:{m:02d}"}


def km_to_m(rng: random.Random) -> Row:
    km = rng.randint(2, 999)
    return {"prompt": f"How many meters are in {km} kilometers? Answer like '5000 m'.", "response": f"{km * 1000} m"}


SENTIMENT = {
    "positive": ("wonderful", "excellent", "delightful", "fantastic", "superb", "lovely", "great", "amazing"),
    "negative": ("terrible", "awful", "disappointing", "dreadful", "horrible", "poor", "boring", "bad"),
}
REVIEWED = ("the pasta", "the hotel room", "this phone", "the movie", "the service", "this book", "the concert",
            "the coffee", "this laptop", "the museum tour", "the haircut", "the delivery")


def sentiment(rng: random.Random) -> Row:
    label = rng.choice(("positive", "negative"))
    review = f"{rng.choice(REVIEWED).capitalize()} was {rng.choice(SENTIMENT[label])}, {rng.choice(NAMES)} said."
    return {"prompt": f"Review: {review}\nIs the sentiment positive or negative?", "response": label}


TOPICS = {
    "sports": ("the team won the final", "the striker scored twice", "the marathon record fell",
               "the coach was fired after the loss", "the tennis star reached the semifinal"),
    "politics": ("the parliament passed the budget", "the minister resigned", "voters went to the polls",
                 "the senator proposed a new law", "the president met foreign leaders"),
    "science": ("researchers found a new planet", "the telescope captured a galaxy", "a new species of frog was found",
                "physicists measured the particle", "the vaccine trial showed results"),
    "business": ("the company reported record profits", "shares fell after the merger", "the startup raised funds",
                 "the bank cut interest rates", "the retailer opened new stores"),
}


def topic(rng: random.Random) -> Row:
    label = rng.choice(sorted(TOPICS))
    headline = f"In {rng.choice(CITIES)}, {rng.choice(TOPICS[label])} on {rng.choice(MONTHS)} {rng.randint(1, 28)}."
    return {"prompt": f"Headline: {headline}\nTopic (sports, politics, science or business)?", "response": label}


def email_domain(rng: random.Random) -> Row:
    user = f"{rng.choice(NAMES).lower()}.{rng.choice(WORDS)}"
    domain = f"{rng.choice(WORDS)}{rng.choice(('mail', 'works', 'labs', 'net', 'web'))}.{rng.choice(('com', 'org'))}"
    return {"prompt": f"What is the domain of the email address {user}@{domain}?", "response": domain}


def last_word(rng: random.Random) -> Row:
    words = _words(rng, rng.randint(3, 6))
    return {"prompt": f'What is the last word of "{" ".join(words)}"? Reply with the word only.', "response": words[-1]}


def python_eval(rng: random.Random) -> Row:
    a, b, op = rng.randint(0, 20), rng.randint(1, 12), rng.choice(("+", "-", "*", "//", "%"))
    expression = f"{a} {op} {b}"
    # The reference is what Python itself computes: the task is Python's semantics (floor division, modulo).
    return {"prompt": f"What does the Python expression `{expression}` evaluate to?",
            "response": str(eval(expression, {"__builtins__": {}}))}


def repeat_word(rng: random.Random) -> Row:
    word, n = rng.choice(WORDS), rng.randint(2, 7)
    return {"prompt": f"Repeat the word '{word}' {n} times, separated by spaces.", "response": " ".join([word] * n)}


def bullet_list(rng: random.Random) -> Row:
    words = _words(rng, rng.randint(2, 4))
    return {"prompt": f"Write these items as a bulleted list: {', '.join(words)}",
            "response": "\n".join(f"- {w}" for w in words)}


def title_case(rng: random.Random) -> Row:
    phrase = " ".join(_words(rng, 3))
    return {"prompt": f"Write in title case: {phrase}", "response": phrase.title()}


def round_ten(rng: random.Random) -> Row:
    n = rng.randint(11, 999)
    while n % 10 == 5:
        n = rng.randint(11, 999)
    return {"prompt": f"Round {n} to the nearest ten.", "response": str(10 * round(n / 10))}


def key_value(rng: random.Random) -> Row:
    name, city, age = rng.choice(NAMES), rng.choice(CITIES), rng.randint(18, 80)
    return {"prompt": f"Write as key=value pairs separated by semicolons: name {name}, age {age}, city {city}",
            "response": f"name={name}; age={age}; city={city}"}


TASKS: dict[str, Generator] = {fn.__name__: fn for fn in (
    addition, date_iso, sort_words, json_person, sentiment, number_words, python_eval, uppercase,
    subtraction, date_slash, reverse_words, topic, words_to_digits, acronym, time_24h, email_domain,
    count_words, larger_number, km_to_m, last_word, even_odd, repeat_word, key_value, bullet_list,
    title_case, round_ten,
)}
# The first eight mix arithmetic, dates, lists, JSON, labels, words and code: the K = 8 experiments merge them.
TASK_ORDER = list(TASKS)[:24]


def task_splits(task: str, sizes: dict[str, int], seed: int) -> dict[str, list[Row]]:
    """Disjoint train/val/test rows of `task` (`sizes`: rows per split), unique by prompt, seeded.

    A task whose item space is smaller than the sizes asked for is a ValueError (a recipe error).
    """
    rng = random.Random(f"{seed}|task|{task}")
    generate = TASKS[task]
    wanted = sum(sizes.values())
    rows: dict[str, Row] = {}
    for _ in range(wanted * 50):
        row = generate(rng)
        rows.setdefault(row["prompt"], row)
        if len(rows) == wanted:
            break
    if len(rows) < wanted:
        raise ValueError(f"task {task} has fewer than {wanted} distinct items")
    items = list(rows.values())
    out, start = {}, 0
    for split, n in sizes.items():
        out[split] = items[start : start + n]
        start += n
    return out


def task_extra_rows(task: str, sizes: dict[str, int], seed: int, n: int) -> list[Row]:
    """`n` more rows of `task`, drawn after its splits by the same seeded generator: disjoint from train,
    val and test, which stay as `task_splits(task, sizes, seed)` gives them."""
    if n <= 0:
        return []
    return task_splits(task, {**sizes, "_extra": n}, seed)["_extra"]
