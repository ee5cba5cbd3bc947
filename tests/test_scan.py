"""The static scan of a genome's source (evo/runner/_scan.py): literal data is measured in bytes whatever
form it takes (text, bytes, integers, floats, displays of them), so recited data packed into numbers is
flagged as text is, and the honest seeds are not."""

from __future__ import annotations

from pathlib import Path

import pytest

from cheats import CHEATS, RECITED, as_numbers
from evo.runner._scan import LITERAL_LIMIT, LITERAL_TOTAL_LIMIT, _literal_sizes, suspicious
from evo.safe_ast import parse

ROOT = Path(__file__).parent.parent
DATA = (RECITED * 200)[:12 << 10].encode()  # 12 KB: past one literal's limit, under the total's
FLAG = "KB of literal data"


def _flagged(source: str) -> bool:
    return any(FLAG in f for f in suspicious(source))


@pytest.mark.parametrize("path", ["train.py", "examples/autoresearch_fork/train.py", "tests/data/instant_genome.py"])
def test_the_honest_seeds_are_not_flagged(path):
    assert suspicious((ROOT / path).read_text()) == []


@pytest.mark.parametrize("name", [c.name for c in CHEATS if c.expect == "flagged"])
def test_every_recited_text_cheat_is_flagged_for_its_literal_data(name):
    cheat = next(c for c in CHEATS if c.name == name)
    assert _flagged(cheat.apply((ROOT / "train.py").read_text()))


@pytest.mark.parametrize("form", [
    lambda d: f"ROWS = {as_numbers(d.decode())}",                                       # hex ints, signs mixed
    lambda d: f"ROWS = [{', '.join(str(int.from_bytes(d[i:i + 8], 'big')) for i in range(0, len(d), 8))}]",
    lambda d: f"ROWS = bytes([{', '.join(map(str, d))}])",                               # bytes from an int list
    lambda d: f"ROWS = {d!r}",                                                           # bytes, as before
    lambda d: f"ROWS = [{', '.join(repr(b / 7) for b in d[:len(d) // 8])}]",             # floats, 8 bytes each
    lambda d: f"ROWS = {{{', '.join(f'{i}: ({b}, -{b})' for i, b in enumerate(d[:len(d) // 3]))}}}",  # nested dict
    lambda d: f"ROWS = ({as_numbers(d.decode()[:len(d) // 2])}, [x, {as_numbers(d.decode()[len(d) // 2:])}])",
    lambda d: f"ROWS = -{hex(int.from_bytes(d, 'big'))}",                                # one folded negative int
])
def test_data_packed_into_numbers_is_flagged_like_text(form):
    source = form(DATA)
    largest, _ = _literal_sizes(parse(source))
    assert largest > LITERAL_LIMIT, largest
    assert _flagged(source)


def test_literals_are_measured_by_the_bytes_they_hold():
    assert _literal_sizes(parse("x = 'abc'")) == (3, 3)
    assert _literal_sizes(parse("x = 0xffff; y = -0x1ff")) == (2, 4)
    assert _literal_sizes(parse("x = (1.5, 2j, [None, True])")) == (8 + 16 + 1 + 1, 26)
    # a display's literals are one literal even beside names and calls; a call's arguments are their own
    assert _literal_sizes(parse("x = [a, 0xffffff, f('ab')]")) == (3, 5)
    assert _literal_sizes(parse("x = 2 ** 99999")) == (1 + 3, 4)  # what it computes is not written data


def test_many_small_literals_count_toward_the_total():
    chunks = [DATA[i:i + 1024] for i in range(0, len(DATA), 1024)] * 3  # 36 pieces of 1 KB
    source = "\n".join(f"ROW_{i} = {as_numbers(c.decode())}" for i, c in enumerate(chunks))
    largest, total = _literal_sizes(parse(source))
    assert largest <= LITERAL_LIMIT < LITERAL_TOTAL_LIMIT < total
    assert _flagged(source)


def test_a_small_table_of_numbers_is_not_flagged():
    assert suspicious("LR = [3e-4, 1e-3, 3e-3]\nSIZES = {n: 2 ** n for n in range(12)}\nMASK = 0xFFFFFFFF\n") == []


def test_an_expression_nested_past_the_interpreters_stack_is_read_without_crashing():
    source = "x = " + " + ".join(["0x1234"] * 2500)  # parses, deeper than a recursive walk could go
    assert _literal_sizes(parse(source)) == (5000, 5000)
    assert not _flagged(source)
    assert suspicious("x = " + "(" * 5000 + ")" * 5000) == []  # too deep to parse: nor will it run
