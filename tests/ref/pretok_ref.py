#!/usr/bin/python3
"""pretok_ref.py: an independent reference for the byte-level BPE pre-tokenizers, with the
standard library's `re` (no `regex` module), checked against the C splitter (tok-tool).

The pattern is the one tokenizer.json / llama.cpp's llama-vocab.cpp give (read there, not
copied from tern's C):
  (?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,D}
  | ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+
with D = 1 for Qwen2 (LLAMA_VOCAB_PRE_TYPE_QWEN2, its \\p{N}: every digit alone) and D = 3 for
LLaMA-3. `re` has no \\p{..}: \\p{L} and \\p{N} are written out as character classes of every
code point whose unicodedata category starts with L or N, and \\s as Unicode's White_Space
property (PropList.txt: 0009-000D, 0020, 0085, 00A0, 1680, 2000-200A, 2028, 2029, 202F, 205F,
3000; `re`'s own \\s would add 001C-001F). Bytes that are not UTF-8 are decoded with
surrogateescape, so each is one lone surrogate (category Cs: neither letter, digit nor space),
as tern counts them.

usage: pretok_ref.py TOK_TOOL     (exit 0 when every string splits the same, for D = 1 and 3)
"""

import random
import re
import subprocess
import sys
import unicodedata

SPACE = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
         (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000)]


def ranges_of(prefix):
    out, lo, prev = [], None, None
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        hit = unicodedata.category(chr(cp)).startswith(prefix)
        if hit and lo is None:
            lo = cp
        if not hit and lo is not None:
            out.append((lo, prev))
            lo = None
        prev = cp
    if lo is not None:
        out.append((lo, prev))
    return out


def cls(rs):
    return "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in rs)


def pattern(max_digits):
    L, N, S = cls(ranges_of("L")), cls(ranges_of("N")), cls(SPACE)
    digits = "[%s]" % N if max_digits == 1 else "[%s]{1,%d}" % (N, max_digits)
    return re.compile(
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
        "|[^\\r\\n%s%s]?[%s]+" % (L, N, L) +
        "|" + digits +
        "| ?[^%s%s%s]+[\\r\\n]*" % (S, L, N) +
        "|[%s]*[\\r\\n]+" % S +
        "|[%s]+(?![^%s])" % (S, S) +
        "|[%s]+" % S)


def split(rx, data):
    text = data.decode("utf-8", "surrogateescape")
    pieces = rx.findall(text)
    assert "".join(pieces) == text, "the pattern does not cover %r" % text
    return [p.encode("utf-8", "surrogateescape") for p in pieces]


CORPUS = [
    "Hello world's 12345", "I'M HERE, they'RE", "3.14159 and 2024-12-04: 1000000 items",
    "price: $1,299.99!!\n\n  next line\r\n\tend   ", "Ⅻ ² ³ ½ ٣٤٥ １２３ ߁߂ 𝟘𝟙",
    "中文字符123混合abc", "naïve café — résumé’s", "  leading and trailing  ", "x\u00a0y\u2009z\u3000w",
    "tabs\t\tand\nnewlines\n\n\n", "emoji 😀😀 12ab34", "don't we'll you'd it's I've",
    "a1b22c333d4444", "12345678901234567890", "\u0301\u0301a\u0301", "'s's'S'", "\x1c\x1d 1\x1e",
]
ALPHABET = list("abcXYZ 0123456789'\n\r\t.,!?-_") + ["é", "中", "٣", "１", "²", "Ⅻ", "\u00a0", "\u2028",
                                                     "\u0301", "😀", "ß", "Ω"]


def corpus():
    rng = random.Random(17)
    out = [s.encode() for s in CORPUS]
    for _ in range(400):
        out.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 40))).encode())
    out += [b"ab\xffcd 12\xfe3", b"\xc3(\xa0 9\x80"]  # not UTF-8: each bad byte alone
    return out


def main():
    tool = sys.argv[1]
    data = corpus()
    bad = 0
    for mode, digits in (("split-qwen2", 1), ("split", 3)):
        rx = pattern(digits)
        r = subprocess.run([tool, mode], input="".join(d.hex() + "\n" for d in data), capture_output=True,
                           text=True, check=True)
        lines = r.stdout.split("\n")
        ndiff = 0
        for d, line in zip(data, lines):
            got = [bytes.fromhex(h) for h in line.split()]
            want = split(rx, d)
            if got != want:
                ndiff += 1
                if ndiff <= 5:
                    print("%s %r: C %r, reference %r" % (mode, d, got, want))
        if len(lines) < len(data):
            ndiff += 1
            print("%s: %d lines for %d strings" % (mode, len(lines), len(data)))
        print("[%s] %s: %d strings, %d differ" % ("  OK  " if ndiff == 0 else " FAIL ", mode, len(data), ndiff))
        bad += ndiff
    # the check can fail: Qwen2 and LLaMA-3 split digits differently
    q, l = split(pattern(1), b"12345"), split(pattern(3), b"12345")
    assert q == [b"1", b"2", b"3", b"4", b"5"] and l == [b"123", b"45"], (q, l)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
