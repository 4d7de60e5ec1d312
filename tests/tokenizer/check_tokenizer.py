#!/usr/bin/python3
"""Compares the C tokenizer (through tok-tool) with independent Python
references:

1. Code point classes: the C tables against the `regex` module's \\p{L},
   \\p{N} and \\s for every code point assigned in this Python's unicodedata.
2. Pre-tokenizer: the original LLaMA-3 pattern run by `regex.findall` against
   the C splitter on a varied corpus plus seeded random strings.
3. BPE: a tiny vocabulary trained here on the corpus (with extra whole-word
   entries that no merge reaches, to exercise ignore_merges, and special
   tokens), encoded by a plain GPT-2-style Python BPE and by C; ids and the
   decoded text must agree.
4. SPM: a SentencePiece-style vocabulary (frequent substrings of the corpus
   with scores, <0xNN> byte fallback) encoded by a plain Python version of
   llama.cpp's greedy best-score merging and by C.
5. Freshness: coordinator/text/unicode-tables.c is what unicode-gen.py writes.

`regex` is Debian's python3-regex. Without it, part 1 is skipped and parts 2-3
take the expected splits of the (deterministic) corpus from the committed
golden file pretok-golden.txt, written by --write-golden.

usage: check_tokenizer.py TOK_TOOL [--write-golden]
"""
import os
import random
import subprocess
import sys
import tempfile
import unicodedata

try:
    import regex
except ImportError:
    regex = None

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, 'pretok-golden.txt')
PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")

FIXED = [
    "Hello world", "Hello, world! How are you?", "I'm fine, you're great; they've gone, we'll see, he'd go",
    "DON'T SHOUT, IT'S LOUD, YOU'RE LOUD, WE'LL, I'D, I'M, THEY'VE", "'s 't 're 've 'm 'll 'd", "'ſ and 'S",
    "rock'n'roll o'clock", "  leading and trailing  ", "a  b   c    d", "tab\tseparated\tvalues\t",
    "line1\nline2\n\nline4\n\n\n", "crlf\r\nline\r\n\r\n", "\n\n\n", "   \n   \n   ", " \n \n x", "\r\r\r",
    "1 12 123 1234 12345 123456 1234567", "3.14159265358979", "2024-11-24 19:33:34 UTC", "$1,000,000.00",
    "x1y22z333w4444", "٣٤٥٦ (Arabic-Indic)", "½ ¾ ² ³ Ⅻ ⅷ", "...!!!???", "foo...\n\nbar", "!?\r\n\r\nnext",
    " !!", " !!\n\n", "((a+b)*c)/d", "<html><body>x</body></html>", "def f(x):\n    return x**2\n",
    "if (a && b) { c(); }\n", "naïve café résumé façade", "Ünïcödé Ströme", "ñandú pingüino",
    "Привет, мир! Как дела?", "Γειά σου Κόσμε", "שלום עולם", "مرحبا بالعالم", "नमस्ते दुनिया हिन्दी",
    "สวัสดีชาวโลก", "你好，世界！今天天气很好。", "日本語のテキストとカタカナ、ひらがな。", "한국어 텍스트입니다",
    "emoji 😀😃 👍🏽 👨‍👩‍👧‍👦 🇩🇪", "mixed😀text", "zero\u200bwidth\u200djoin", "nbsp\u00a0here\u00a0",
    "ideographic\u3000space", "en\u2002em\u2003thin\u2009", "line\u2028sep\u2029para", "\u0085next line",
    "vt\x0bff\x0c", "ctrl\x01\x02\x1f\x7f", "combining e\u0301 a\u0308", "ﬁ ligature ﬀ", "ＦＵＬＬ ｗｉｄｔｈ １２３",
    "𝐌𝐚𝐭𝐡 𝟏𝟐𝟑", "a'b'c", "''''", "' '", "'", " ", "", "x", " x", "\tx", "\nx", "  x", "\t\tx", "\n\nx",
    "  \t x", "a\u00a0b", "#hashtag @mention", "e-mail: someone@example.com", "http://example.com/a?b=c&d=e",
    "5th 21st 3rd", "CamelCaseWord", "snake_case_word", "UPPER lower Title",
]

POOL = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789     \t\n\r'''\".,;:!?-_()[]{}<>/\\|@#$%^&*+=~`"
        "éüñßøçÉÜÑ" "αβγΔΩ" "привет" "中文字漢日本語" "ひらがなカタカナ" "한국어" "١٢٣" "½²Ⅻ" "😀👍🏽🇩" "\u200d\u0301\u00a0\u3000\u2028\u0085")


def assigned(cp):
    return not (0xD800 <= cp < 0xE000) and unicodedata.category(chr(cp)) != 'Cn'


def corpus():
    rng = random.Random(1234)
    out = list(FIXED)
    for _ in range(400):
        n = rng.randint(1, 40)
        out.append(''.join(rng.choice(POOL) for _ in range(n)))
    for _ in range(100):
        s = []
        for _ in range(rng.randint(1, 20)):
            while True:
                cp = rng.randint(0x20, 0x2FFFF)
                if assigned(cp):
                    break
            s.append(chr(cp))
            if rng.random() < 0.3:
                s.append(rng.choice(" \n'1a"))
        out.append(''.join(s))
    return out


def run_tool(tool, args, lines):
    p = subprocess.run([tool] + args, input=''.join(l + '\n' for l in lines).encode(), stdout=subprocess.PIPE,
                       check=True)
    return p.stdout.decode().split('\n')[:len(lines)]


def tool_encodings(tool, mode, vocab_lines, cases):
    """Writes vocab_lines as a vocabulary file for the tool's MODE ("bpe" or
    "spm") and has it encode and decode every (text, flags) case:
    [(text, flags, C ids, decoded bytes)]."""
    with tempfile.NamedTemporaryFile('w', suffix='.vocab', delete=False) as f:
        f.write(''.join(l + '\n' for l in vocab_lines))
        path = f.name
    try:
        got = run_tool(tool, [mode, path], ['%d %s' % (fl, t.encode().hex()) for t, fl in cases])
    finally:
        os.unlink(path)
    out = []
    for (t, fl), line in zip(cases, got):
        ids_s, _, dec = line.partition(' ')
        out.append((t, fl, [int(x) for x in ids_s.split(',') if x], bytes.fromhex(dec)))
    return out


def check_classes(tool):
    out = subprocess.run([tool, 'ranges'], stdout=subprocess.PIPE, check=True).stdout.decode().split('\n')
    if out[0] != unicodedata.unidata_version:
        print('note: C tables are Unicode %s, this Python has %s' % (out[0], unicodedata.unidata_version))
    cls = {}
    for line in out[1:]:
        if line:
            lo, hi, c = line.split()
            for cp in range(int(lo, 16), int(hi, 16) + 1):
                cls[cp] = int(c)
    pl, pn, ps = regex.compile(r'\p{L}'), regex.compile(r'\p{N}'), regex.compile(r'\s')
    bad = 0
    for cp in range(0x110000):
        if not assigned(cp):
            continue
        ch = chr(cp)
        want = 3 if ps.match(ch) else 1 if pl.match(ch) else 2 if pn.match(ch) else 0
        if cls.get(cp, 0) != want:
            if bad < 10:
                print('class mismatch U+%04X: C %d, regex %d' % (cp, cls.get(cp, 0), want))
            bad += 1
    print('classes: %d assigned code points checked, %d mismatches' % (sum(1 for c in range(0x110000) if assigned(c)),
                                                                        bad))
    return bad == 0


def check_table_fresh():
    """The committed coordinator/text/unicode-tables.c is what unicode-gen.py
    writes (when this Python has the same Unicode version)."""
    root = os.path.dirname(os.path.dirname(HERE))
    gen = os.path.join(root, 'coordinator', 'text', 'unicode-gen.py')
    with open(os.path.join(root, 'coordinator', 'text', 'unicode-tables.c'), encoding='utf-8') as f:
        committed = f.read()
    if 'from Unicode %s\n' % unicodedata.unidata_version not in committed:
        print('unicode-tables.c: other Unicode version than this Python; not regenerated')
        return True
    fresh = subprocess.run([sys.executable, gen], stdout=subprocess.PIPE, check=True).stdout.decode()
    print('unicode-tables.c: %s' % ('matches unicode-gen.py' if fresh == committed else 'STALE, rerun unicode-gen.py'))
    return fresh == committed


def expected_splits(texts):
    if regex is not None:
        pat = regex.compile(PATTERN)
        return [pat.findall(t) for t in texts]
    with open(GOLDEN, encoding='utf-8') as f:
        rows = [l.rstrip('\n') for l in f]
    gold = {}
    for row in rows:
        text_hex, _, pieces = row.partition('\t')
        gold[bytes.fromhex(text_hex).decode()] = [bytes.fromhex(p).decode() for p in pieces.split(' ') if p]
    return [gold[t] for t in texts]


def check_splits(tool, texts, splits):
    got = run_tool(tool, ['split'], [t.encode().hex() for t in texts])
    bad = 0
    for t, want, line in zip(texts, splits, got):
        have = [bytes.fromhex(p).decode() for p in line.split(' ') if p]
        if have != want:
            if bad < 10:
                print('split mismatch for %r:\n  C      %r\n  Python %r' % (t, have, want))
            bad += 1
    print('pre-tokenizer: %d strings, %d mismatches' % (len(texts), bad))
    return bad == 0


def byte_map():
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    m, k = {}, 0
    for b in range(256):
        if b in keep:
            m[b] = chr(b)
        else:
            m[b] = chr(0x100 + k)
            k += 1
    return m


BMAP = byte_map()
SPECIALS = ['<|begin_of_text|>', '<|end_of_text|>', '<|eot_id|>']


def mapped(piece):
    return ''.join(BMAP[b] for b in piece.encode())


def merge_pair(seq, a, b):
    """seq with every non-overlapping a, b (left to right) merged into a + b."""
    out, i = [], 0
    while i < len(seq):
        if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def train(words, n_merges):
    """Plain BPE training: repeatedly merge the most frequent adjacent pair
    (ties: the smallest pair). Pair counts are updated only for the words
    that contain the merged pair."""
    seqs = {}
    for w in words:
        m = tuple(mapped(w))
        seqs[m] = seqs.get(m, 0) + 1
    seqs = [[list(s), c] for s, c in seqs.items()]
    counts = {}
    for s, c in seqs:
        for pair in zip(s, s[1:]):
            counts[pair] = counts.get(pair, 0) + c
    merges = []
    for _ in range(n_merges):
        if not counts:
            break
        top = max(counts.values())
        if top < 2:
            break
        best = min(p for p, c in counts.items() if c == top)
        merges.append(best)
        a, b = best
        for entry in seqs:
            s, c = entry
            if len(s) < 2 or not any(s[i] == a and s[i + 1] == b for i in range(len(s) - 1)):
                continue
            for pair in zip(s, s[1:]):
                counts[pair] -= c
                if counts[pair] == 0:
                    del counts[pair]
            out = merge_pair(s, a, b)
            for pair in zip(out, out[1:]):
                counts[pair] = counts.get(pair, 0) + c
            entry[0] = out
    return merges


def split_specials(parts, specials):
    """[(text, is_special)] with every special token (longest first) split
    out of the plain parts as a part of its own; empty pieces dropped."""
    for sp in sorted(specials, key=len, reverse=True):
        nxt = []
        for p, is_sp in parts:
            if is_sp:
                nxt.append((p, True))
                continue
            for i, c in enumerate(p.split(sp)):
                if i:
                    nxt.append((sp, True))
                if c:
                    nxt.append((c, False))
        parts = nxt
    return parts


def py_encode(text, vocab, ranks, merge_list, pieces_of, parse_special, add_bos):
    """Reference: specials split out first, then per pre-token ignore_merges
    and GPT-2 BPE (lowest-rank pair, all its occurrences left to right)."""
    out = [0] if add_bos else []
    parts = [(text, False)]
    if parse_special:
        parts = split_specials(parts, SPECIALS)
    for p, is_sp in parts:
        if is_sp:
            out.append(vocab[p])
            continue
        for piece in pieces_of(p):
            m = mapped(piece)
            if m in vocab:
                out.append(vocab[m])
                continue
            word = list(m)
            while len(word) > 1:
                cands = [(ranks.get((word[i], word[i + 1]), 1 << 60), i) for i in range(len(word) - 1)]
                r, _ = min(cands)
                if r == 1 << 60:
                    break
                a, b = merge_list[r]
                word = merge_pair(word, a, b)
            out.extend(vocab[w] for w in word)
    return out


def check_bpe(tool, texts, splits):
    split_of = dict(zip(texts, splits))
    words = [w for s in splits for w in s]
    merges = train(words, 800)
    tokens = ['<|begin_of_text|>'] + [BMAP[b] for b in range(256)]
    types = [3] + [1] * 256
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
            types.append(1)
    # Whole words no merge reaches: ignore_merges must emit them directly.
    for w in [' hello', ' world', 'Hello', ' Привет', '你好', '...!!!', '  ']:
        m = mapped(w)
        if m not in tokens:
            tokens.append(m)
            types.append(1)
    for sp in SPECIALS[1:]:
        tokens.append(sp)
        types.append(3)
    vocab = {t: i for i, t in enumerate(tokens)}
    ranks = {m: i for i, m in enumerate(merges)}
    cases = []
    for t in texts:
        cases.append((t, 0))
    extra = ['<|begin_of_text|>Hello world<|eot_id|>', 'User: hi<|eot_id|>Assistant: ', 'a<|eot_id|><|eot_id|>b',
             '<|end_of_text|> hello <|begin_of_text|>', ' hello world', 'Hello hello', '<|eot_id', 'x<|eot_id|>']
    for t in extra:
        cases += [(t, 0), (t, 1), (t, 2), (t, 3)]
    pat = regex.compile(PATTERN) if regex is not None else None

    def pieces_of(p):
        return pat.findall(p) if pat is not None else split_of[p]

    if pat is None:
        # Without regex only corpus strings have known splits.
        cases = [(t, f) for t, f in cases if t in split_of and f < 2]
    lines = (['%d %d' % (len(tokens), len(merges))] + ['%d %s' % (ty, t.encode().hex()) for t, ty in zip(tokens, types)]
             + [(a + ' ' + b).encode().hex() for a, b in merges])
    bad = 0
    for t, fl, have, dec in tool_encodings(tool, 'bpe', lines, cases):
        want = py_encode(t, vocab, ranks, merges, pieces_of, fl & 2, fl & 1)
        text_back = dec.decode('utf-8', 'replace')
        want_back = ('<|begin_of_text|>' if fl & 1 else '') + t
        if have != want or text_back != want_back:
            if bad < 10:
                print('BPE mismatch for %r flags %d:\n  C      %r\n  Python %r\n  decoded %r' % (t, fl, have, want,
                                                                                             text_back))
            bad += 1
    print('BPE: %d tokens, %d merges, %d encodings, %d mismatches' % (len(tokens), len(merges), len(cases), bad))
    return bad == 0


SPM_SPECIALS = ['<unk>', '<s>', '</s>']
SP = '\u2581'


def spm_vocab(texts):
    """Substrings (1-6 characters) of the escaped corpus seen at least 3
    times; score = log-ish of the count, exact in float32 (multiples of 1/8)."""
    counts = {}
    for t in texts:
        e = SP + t.replace(' ', SP)
        for i in range(len(e)):
            for k in range(1, 7):
                if i + k <= len(e):
                    sub = e[i:i + k]
                    counts[sub] = counts.get(sub, 0) + 1
    pieces = sorted((c, p) for p, c in counts.items() if c >= 3 and p not in SPM_SPECIALS)
    tokens = list(SPM_SPECIALS) + ['<0x%02X>' % b for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0] * len(tokens)
    seen = set(tokens)
    for c, p in pieces:
        if p in seen:
            continue
        seen.add(p)
        tokens.append(p)
        types.append(1)
        scores.append(-round(64.0 / c.bit_length() + len(p) % 3, 3) // 0.125 * 0.125)
    return tokens, types, scores


def py_spm_encode(text, vocab, scores, add_bos, parse_special):
    out = [1] if add_bos else []
    parts = [(text, False)] if text else []  # empty text: no fragment, no space prefix
    if parse_special:
        parts = split_specials(parts, SPM_SPECIALS)
    prev_special = True
    for p, is_sp in parts:
        if is_sp:
            out.append(vocab[p])
            prev_special = True
            continue
        sym = list(((' ' if prev_special else '') + p).replace(' ', SP))
        prev_special = False
        while True:
            best = None
            for i in range(len(sym) - 1):
                cat = sym[i] + sym[i + 1]
                if cat in vocab and (best is None or scores[vocab[cat]] > scores[vocab[sym[best] + sym[best + 1]]]):
                    best = i
            if best is None:
                break
            sym[best:best + 2] = [sym[best] + sym[best + 1]]
        for w in sym:
            if w in vocab:
                out.append(vocab[w])
            else:
                out.extend(vocab['<0x%02X>' % b] for b in w.encode())
    return out


def py_spm_decode(ids, tokens, types):
    out = b''
    for i in ids:
        t, ty = tokens[i], types[i]
        if ty == 6:
            out += bytes([int(t[3:5], 16)])
        elif ty == 2:
            out += '\u2585'.encode()
        else:
            out += t.replace(SP, ' ').encode()
    return out[1:] if out.startswith(b' ') else out


def check_spm(tool, texts):
    tokens, types, scores = spm_vocab(texts[:len(FIXED)])
    vocab = {t: i for i, t in enumerate(tokens)}
    cases = [(t, f) for t in texts for f in (0, 1)]
    cases += [(t, f) for t in ['<s>hello</s> world', 'a</s>', '</s></s>x', '<unk> y'] for f in range(4)]
    lines = ['%d 0' % len(tokens)] + ['%d %r %s' % (ty, sc, t.encode().hex())
                                      for t, ty, sc in zip(tokens, types, scores)]
    bad = 0
    for t, fl, have, back in tool_encodings(tool, 'spm', lines, cases):
        want = py_spm_encode(t, vocab, scores, fl & 1, fl & 2)
        want_back = py_spm_decode(want, tokens, types)
        if have != want or back != want_back:
            if bad < 10:
                print('SPM mismatch for %r flags %d:\n  C      %r\n  Python %r\n  decoded %r / %r' % (
                    t, fl, have, want, back, want_back))
            bad += 1
    print('SPM: %d tokens, %d encodings, %d mismatches' % (len(tokens), len(cases), bad))
    return bad == 0


def main():
    tool = sys.argv[1]
    texts = corpus()
    if len(sys.argv) > 2 and sys.argv[2] == '--write-golden':
        pat = regex.compile(PATTERN)
        with open(GOLDEN, 'w', encoding='utf-8') as f:
            for t in texts:
                f.write(t.encode().hex() + '\t' + ' '.join(p.encode().hex() for p in pat.findall(t)) + '\n')
        print('wrote', GOLDEN)
        return 0
    ok = check_table_fresh()
    if regex is not None:
        ok &= check_classes(tool)
    else:
        print('python3-regex is not installed: using the golden splits in', GOLDEN)
    splits = expected_splits(texts)
    ok &= check_splits(tool, texts, splits)
    ok &= check_bpe(tool, texts, splits)
    ok &= check_spm(tool, texts)
    print('OK' if ok else 'FAILED')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
