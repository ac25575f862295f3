"""Problems to evaluate: JSONL files with ``question`` and ``answer``, or generated arithmetic.

The generator exists because the embedded default model (135M parameters) scores near zero on
competition math: short arithmetic word problems, with the number of steps as the difficulty,
are where such a model is neither always right nor always wrong, which is where test-time
methods can show a difference. Same (size, difficulty, seed), same problems, on any machine.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

INSTRUCTION = "Put the final answer in \\boxed{}."
_BOXED = re.compile(r"^\s*\\boxed\s*\{(.*)\}\s*$", re.DOTALL)


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str  # the gold answer, without \boxed{}

    def messages(self) -> list[dict[str, str]]:
        """The chat the model sees: the question, asked for a boxed answer unless it already is."""
        content = self.question if "boxed" in self.question else f"{self.question}\n{INSTRUCTION}"
        return [{"role": "user", "content": content}]


def _unboxed(answer: str) -> str:
    match = _BOXED.match(answer)
    return match.group(1).strip() if match else answer.strip()


def load_jsonl(path: str | Path, limit: int | None = None) -> list[Problem]:
    """Problems from a JSONL file: one object per line with ``question`` (or ``problem``) and
    ``answer`` (a number, an expression, or ``\\boxed{...}``); ``id`` is optional."""
    problems: list[Problem] = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            question = row.get("question", row.get("problem"))
            if question is None or "answer" not in row:
                raise ValueError(f"{path}:{lineno}: needs 'question' (or 'problem') and 'answer'")
            problems.append(
                Problem(str(row.get("id", lineno)), str(question), _unboxed(str(row["answer"])))
            )
            if limit is not None and len(problems) >= limit:
                break
    return problems


_NAMES = [("Ava", "she", "her"), ("Ben", "he", "him"), ("Chloe", "she", "her"), ("Dev", "he", "him"),
          ("Emma", "she", "her"), ("Finn", "he", "him"), ("Grace", "she", "her"), ("Hugo", "he", "him"),
          ("Iris", "she", "her"), ("Jack", "he", "him"), ("Lena", "she", "her"), ("Omar", "he", "him")]
_ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "shells", "cards"]


def _step(rng: random.Random, value: int, hi: int, difficulty: int) -> tuple[str, str, int]:
    """One operation on the running count: the sentence, its equation, the new count (never
    negative, divisions exact). Difficulty 1 adds and subtracts, 2 also multiplies, 3+ also
    divides."""
    ops = ["add", "sub"] + (["mul"] if difficulty >= 2 else []) + (["div"] if difficulty >= 3 and value >= 4 else [])
    op = rng.choice(ops)
    if op == "sub" and value > 1:
        b = rng.randint(1, min(value - 1, hi))
        sentence = rng.choice(["Then {p} gives away {b}.", "Then {p} loses {b}."]).replace("{b}", str(b))
        return sentence, f"{value} - {b} = {value - b}", value - b
    if op == "div":
        divisors = [d for d in (2, 3, 4, 5) if value % d == 0]
        if divisors:
            d = rng.choice(divisors)
            return f"Then {{p}} splits them into {d} equal piles and keeps one pile.", f"{value} / {d} = {value // d}", value // d
    if op == "mul":
        m = rng.randint(2, 3 if hi < 40 else 5)
        return f"Then {{p}} gets {m} times as many.", f"{value} * {m} = {value * m}", value * m
    b = rng.randint(2, hi)
    sentence = rng.choice(["Then {p} buys {b} more.", "A friend gives {p2} {b} more."]).replace("{b}", str(b))
    return sentence, f"{value} + {b} = {value + b}", value + b


def _word_problem(rng: random.Random, difficulty: int) -> tuple[str, str, int]:
    """(question, worked solution, answer). Difficulty 0 is a bare sum or difference of two
    one-digit numbers, with no story around it."""
    if difficulty == 0:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        a, b, op = (max(a, b), min(a, b), "-") if rng.random() < 0.5 else (a, b, "+")
        value = a + b if op == "+" else a - b
        return f"What is {a} {op} {b}?", f"{a} {op} {b} = {value}. The answer is \\boxed{{{value}}}.", value
    hi = 10 * difficulty + 10
    (name, pronoun, obj), item = rng.choice(_NAMES), rng.choice(_ITEMS)
    value = rng.randint(3, hi)
    sentences, equations = [f"{name} has {value} {item}."], []
    for _ in range(difficulty):
        sentence, equation, value = _step(rng, value, hi, difficulty)
        sentences.append(sentence.replace("{p2}", obj).replace("{p}", pronoun))
        equations.append(equation)
    sentences.append(f"How many {item} does {name} have now?")
    solution = " ".join(f"{e}." for e in equations) + f" The answer is \\boxed{{{value}}}."
    return " ".join(sentences), solution, value


def arithmetic(size: int, difficulty: int = 1, seed: int = 0, shots: int = 0) -> list[Problem]:
    """``size`` word problems of ``difficulty`` operations each (0: a bare one-digit sum or
    difference; 1: one addition or subtraction on numbers up to 20; more steps, larger numbers, then multiplication and division as it
    grows). ``shots`` worked examples of the same difficulty (drawn apart from the problems)
    open every question: small models follow the answer format far more often with one."""
    if size < 1 or difficulty < 0 or shots < 0:
        raise ValueError("size must be >= 1, difficulty and shots >= 0")
    examples_rng = random.Random(f"arithmetic-shots:{difficulty}:{seed}")
    preamble = ""
    for _ in range(shots):
        question, solution, _ = _word_problem(examples_rng, difficulty)
        preamble += f"Question: {question}\nAnswer: {solution}\n\n"
    rng = random.Random(f"arithmetic:{difficulty}:{seed}")
    problems = []
    for i in range(size):
        question, _, value = _word_problem(rng, difficulty)
        text = f"{preamble}Question: {question}" if shots else question
        problems.append(Problem(f"arith-d{difficulty}-s{seed}-{i}", text, str(value)))
    return problems
