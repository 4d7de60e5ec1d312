#!/usr/bin/python3
"""train_bitnet.py: trains tern's built-in default model, a small BitNet b1.58, from scratch.

Owns the whole recipe of deploy/models/tern-kjv.gguf (issue 8): the corpus (the King James
Bible from Debian's bible-kjv-text, public domain), the byte-level BPE tokenizer it trains
itself, the model (the exact BitNet b1.58 architecture of MODEL-FORMATS 1.1-1.4 at a small
size), the training loop, the held-out evaluation, and (through export_gguf.py) the GGUF and
the reference figures the quality tests compare tern against.

Everything is deterministic for a fixed --seed and thread count: the text, the tokenizer
(ties go to the smallest pair as a string tuple), the batches (a seeded generator), the initial
weights and the steps.

The evaluation (eval_windows) computes exactly what tern's perplexity does
(coordinator/gen/perplexity.c): the token stream of a text (no BOS), cut into consecutive
windows of n_ctx-1 tokens; each window is fed as [BOS] + window and every one of its
tokens is scored (the last window may be shorter). Every text token is scored exactly once.
It runs the exported numerics: F16 embeddings (input and tied head), ternary weights times
their absmean scale, int8 activations, float32 everywhere else.

Usage (the model card's command):
  /usr/bin/python3 deploy/train/train_bitnet.py --out-dir deploy/models
"""

import argparse
import heapq
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict

import regex
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))

# LLaMA-3's pre-tokenizer (MODEL-FORMATS 3.1), what tern's tokenizer uses for "llama-bpe".
PRETOK = regex.compile(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                       r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>")
# The held-out slice: the Epistle of James, a contiguous book the training never sees.
HELDOUT_BOOK = "Jas"


# ----------------------------------------------------------------------------------------------
# Corpus


def bible_verses():
    """[(reference, text)] of the whole KJV, from the bible(1) reader of Debian's bible-kjv."""
    out = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], check=True, capture_output=True,
                         text=True, encoding="utf-8").stdout
    verses = []
    for line in out.splitlines():
        line = line.strip()
        if not line:
            continue
        ref, _, text = line.partition(" ")
        if ":" not in ref or not text:
            raise SystemExit("train_bitnet: unexpected bible(1) output line %r" % line[:80])
        verses.append((ref, " ".join(text.split())))
    return verses


def split_corpus(verses):
    """(train text, held-out text): one verse per line; the held-out book is removed from training."""
    def book(ref):
        return regex.match(r"^(\d?[A-Za-z]+)", ref).group(1)
    train = [t for r, t in verses if book(r) != HELDOUT_BOOK]
    held = [t for r, t in verses if book(r) == HELDOUT_BOOK]
    if not held:
        raise SystemExit("train_bitnet: held-out book %s not found" % HELDOUT_BOOK)
    return "\n".join(train) + "\n", "\n".join(held) + "\n"


# ----------------------------------------------------------------------------------------------
# Byte-level BPE (GPT-2 byte map, ranks = merge order, ignore_merges like LLaMA-3)


def bytes_to_unicode():
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    m, extra = {}, 0
    for b in range(256):
        if b in keep:
            m[b] = chr(b)
        else:
            m[b] = chr(0x100 + extra)
            extra += 1
    return m


B2U = bytes_to_unicode()
U2B = {u: b for b, u in B2U.items()}


def pretokens(text):
    """The byte-mapped pre-tokens of text."""
    return ["".join(B2U[b] for b in p.encode("utf-8")) for p in PRETOK.findall(text)]


def train_bpe(text, n_merges):
    """[(a, b)] merges in rank order, learnt greedily on the pre-token counts of text.

    Incremental pair counts with a pair -> words index and a lazy max-heap; ties between
    equally frequent pairs go to the smallest (a, b), so the result does not depend on hashing.
    """
    counts = Counter(pretokens(text))
    words = [list(w) for w in counts]
    freq = [counts[w] for w in counts]
    pairs = defaultdict(int)
    where = defaultdict(set)
    for i, w in enumerate(words):
        for a, b in zip(w, w[1:]):
            pairs[(a, b)] += freq[i]
            where[(a, b)].add(i)
    heap = [(-n, p) for p, n in pairs.items()]
    heapq.heapify(heap)
    merges = []
    while len(merges) < n_merges and heap:
        negn, best = heapq.heappop(heap)
        if pairs.get(best, 0) != -negn:
            continue   # stale entry: the pair's count changed and was pushed again
        if -negn < 2:
            break
        merges.append(best)
        a, b = best
        ab = a + b
        touched = set()
        for i in sorted(where[best]):
            w = words[i]
            f = freq[i]
            for x, y in zip(w, w[1:]):
                pairs[(x, y)] -= f
                touched.add((x, y))
                where[(x, y)].discard(i)
            j, nw = 0, []
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    nw.append(ab)
                    j += 2
                else:
                    nw.append(w[j])
                    j += 1
            words[i] = nw
            for x, y in zip(nw, nw[1:]):
                pairs[(x, y)] += f
                touched.add((x, y))
                where[(x, y)].add(i)
        for p in touched:
            if pairs[p] > 0:
                heapq.heappush(heap, (-pairs[p], p))
            else:
                del pairs[p]
        where.pop(best, None)
    return merges


class Tokenizer:
    """Encodes exactly as tern's llama-bpe tokenizer: regex split, whole pre-token if in vocab, else BPE by rank."""

    def __init__(self, merges):
        self.merges = merges
        self.tokens = [B2U[b] for b in range(256)] + [a + b for a, b in merges] + list(SPECIALS)
        self.types = [1] * (len(self.tokens) - len(SPECIALS)) + [3] * len(SPECIALS)
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        if len(self.ids) != len(self.tokens):
            raise SystemExit("train_bitnet: duplicate token in the vocabulary")
        self.rank = {m: r for r, m in enumerate(merges)}
        self.bos, self.eos, self.eot = (self.ids[s] for s in SPECIALS)
        self.cache = {}

    def _bpe(self, p):
        if p in self.ids:
            return [self.ids[p]]
        w = list(p)
        while len(w) > 1:
            best, bi = None, -1
            for i in range(len(w) - 1):
                r = self.rank.get((w[i], w[i + 1]))
                if r is not None and (best is None or r < best):
                    best, bi = r, i
            if best is None:
                break
            w[bi:bi + 2] = [w[bi] + w[bi + 1]]
        return [self.ids[s] for s in w]

    def encode(self, text):
        out = []
        for p in pretokens(text):
            ids = self.cache.get(p)
            if ids is None:
                ids = self.cache[p] = self._bpe(p)
            out.extend(ids)
        return out

    def decode(self, ids):
        bs = bytearray()
        for i in ids:
            t = self.tokens[i]
            if self.types[i] == 3:
                continue
            bs.extend(U2B[c] for c in t)
        return bs.decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------------------------
# The model: BitNet b1.58 (MODEL-FORMATS 1.2)


def weight_quant(w):
    """(ternary Wt, scale = mean|W|) per tensor; torch.round is round half to even."""
    s = 1.0 / w.abs().mean().clamp(min=1e-5)
    return (w * s).round().clamp(-1, 1), 1.0 / s


def act_quant(x):
    """(int8-valued xq, s_x) per token: s_x = 127/max(max|x|, 1e-5)."""
    s = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return (x * s).round().clamp(-128, 127), s


class BitLinear(torch.nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n_out, n_in) * 0.02)

    def forward(self, x):
        wt, ws = weight_quant(self.weight)
        xq, xs = act_quant(x)
        if self.training:
            # Straight-through estimators: the forward value is the dequantized one, the gradient the identity.
            w = self.weight + (wt * ws - self.weight).detach()
            xd = x + (xq / xs - x).detach()
            return F.linear(xd, w)
        # Exported numerics (tern's I2_S matmul): exact integer dot, then / s_x * scale in float32.
        return F.linear(xq, wt) / xs * ws


class RMSNorm(torch.nn.Module):
    def __init__(self, n, eps=1e-5):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(n_ctx, head_dim, theta):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    ang = torch.arange(n_ctx, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cos(ang).float(), torch.sin(ang).float()


def rope_neox(x, cos, sin):
    """x (B, H, T, D): element j pairs with j + D/2 (HF rotate_half)."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Block(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        e, hd = c["n_embd"], c["n_embd"] // c["n_head"]
        self.n_head, self.n_kv, self.hd = c["n_head"], c["n_head_kv"], hd
        self.attn_norm = RMSNorm(e)
        self.q = BitLinear(e, e)
        self.k = BitLinear(e, self.n_kv * hd)
        self.v = BitLinear(e, self.n_kv * hd)
        self.attn_sub_norm = RMSNorm(e)
        self.o = BitLinear(e, e)
        self.ffn_norm = RMSNorm(e)
        self.gate = BitLinear(e, c["n_ff"])
        self.up = BitLinear(e, c["n_ff"])
        self.ffn_sub_norm = RMSNorm(c["n_ff"])
        self.down = BitLinear(c["n_ff"], e)

    def forward(self, h, cos, sin, mask):
        B, T, E = h.shape
        a = self.attn_norm(h)
        q = self.q(a).view(B, T, self.n_head, self.hd).transpose(1, 2)
        k = self.k(a).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = self.v(a).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q, k = rope_neox(q, cos, sin), rope_neox(k, cos, sin)
        rep = self.n_head // self.n_kv   # query head i uses KV head i / rep
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(self.hd)) + mask
        o = (torch.softmax(att, dim=-1) @ v).transpose(1, 2).reshape(B, T, E)
        h = h + self.o(self.attn_sub_norm(o))
        f = self.ffn_norm(h)
        m = torch.relu(self.gate(f)).square() * self.up(f)
        return h + self.down(self.ffn_sub_norm(m))


class BitNet(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embd = torch.nn.Parameter(torch.randn(c["vocab"], c["n_embd"]) * 0.02)
        self.blocks = torch.nn.ModuleList(Block(c) for _ in range(c["n_layer"]))
        self.output_norm = RMSNorm(c["n_embd"])
        cos, sin = rope_tables(c["n_ctx"], c["n_embd"] // c["n_head"], c["rope_theta"])
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, idx):
        T = idx.shape[1]
        # The GGUF stores token_embd as F16 (input and tied head): train and evaluate on those values.
        e = self.embd + (self.embd.half().float() - self.embd).detach()
        h = e[idx]
        mask = torch.full((T, T), float("-inf")).triu(1)
        for b in self.blocks:
            h = b(h, self.cos[:T], self.sin[:T], mask)
        return self.output_norm(h) @ e.t()


# ----------------------------------------------------------------------------------------------
# Evaluation (the same windows as coordinator/gen/perplexity.c)


@torch.no_grad()
def eval_windows(model, ids, bos, n_ctx):
    """(mean NLL in nats, token count) over ids: windows of n_ctx-1 tokens, each fed as [BOS]+window."""
    model.eval()
    n = n_ctx - 1
    nll, cnt = 0.0, 0
    for s in range(0, len(ids), n):
        w = ids[s:s + n]
        x = torch.tensor([[bos] + w[:-1]])
        lp = torch.log_softmax(model(x)[0].double(), dim=-1)
        nll -= lp[torch.arange(len(w)), torch.tensor(w)].sum().item()
        cnt += len(w)
    return nll / cnt, cnt


@torch.no_grad()
def greedy(model, prompt_ids, n):
    model.eval()
    seq = list(prompt_ids)
    for _ in range(n):
        logits = model(torch.tensor([seq[-model.c["n_ctx"]:]]))[0, -1]
        seq.append(int(torch.argmax(logits)))
    return seq[len(prompt_ids):]


# ----------------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description="Train tern's default BitNet b1.58 model on the KJV Bible.")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "..", "models"))
    ap.add_argument("--name", default="tern-kjv")
    # The numeric options; each takes its default's type.
    for opt, default in (("--seed", 1611), ("--threads", 2), ("--vocab", 4096), ("--n-embd", 256), ("--n-layer", 4),
                         ("--n-head", 4), ("--n-head-kv", 2), ("--n-ff", 640), ("--n-ctx", 128),
                         ("--rope-theta", 10000.0), ("--batch", 16), ("--steps", 900), ("--lr", 3e-3),
                         ("--warmup", 30), ("--wd", 0.05)):
        ap.add_argument(opt, type=type(default), default=default)
    ap.add_argument("--prompt", default="And God said,")
    ap.add_argument("--n-predict", type=int, default=32)
    ap.add_argument("--ckpt", default="", help="also save the PyTorch checkpoint here (not committed)")
    ap.add_argument("--time-only", type=int, default=0, help="time this many steps and exit")
    a = ap.parse_args(argv)

    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    train_text, held_text = split_corpus(bible_verses())
    n_merges = a.vocab - 256 - len(SPECIALS)
    merges = train_bpe(train_text, n_merges)
    if len(merges) != n_merges:
        raise SystemExit("train_bitnet: only %d merges learnt" % len(merges))
    tok = Tokenizer(merges)
    train_ids = torch.tensor(tok.encode(train_text))
    held_ids = tok.encode(held_text)
    print("corpus: train %d chars / %d tokens, held-out (%s) %d chars / %d tokens; tokenizer %.1f s"
          % (len(train_text), len(train_ids), HELDOUT_BOOK, len(held_text), len(held_ids), time.time() - t0),
          flush=True)

    c = {"vocab": len(tok.tokens), "n_embd": a.n_embd, "n_layer": a.n_layer, "n_head": a.n_head,
         "n_head_kv": a.n_head_kv, "n_ff": a.n_ff, "n_ctx": a.n_ctx, "rope_theta": a.rope_theta}
    model = BitNet(c)
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(a.seed)
    L = a.n_ctx - 1
    unigram = torch.bincount(train_ids, minlength=c["vocab"]).double()
    p = unigram / unigram.sum()
    unigram_nll = -(p[p > 0] * p[p > 0].log()).sum().item()
    print("params %d; unigram entropy of the training tokens %.3f nats" %
          (sum(q.numel() for q in model.parameters()), unigram_nll), flush=True)

    steps = a.time_only or a.steps
    t_train = time.time()
    ema = None
    for step in range(steps):
        lr = a.lr * min(1.0, (step + 1) / a.warmup)
        if step >= a.warmup:
            frac = (step - a.warmup) / max(1, steps - a.warmup)
            lr = a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(train_ids) - L - 1, (a.batch,), generator=gen)
        seq = torch.stack([train_ids[s:s + L + 1] for s in starts.tolist()])
        x = torch.cat([torch.full((a.batch, 1), tok.bos), seq[:, :-1]], dim=1)
        model.train()
        loss = F.cross_entropy(model(x).view(-1, c["vocab"]), seq.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 10 == 0 or step == steps - 1:
            print("step %5d  lr %.2e  loss %.4f  (ema %.4f)  %.1f s" % (step, lr, loss.item(), ema,
                                                                      time.time() - t_train), flush=True)
    train_time = time.time() - t_train
    if a.time_only:
        print("%.2f s/step" % (train_time / steps))
        return 0

    held_nll, held_n = eval_windows(model, held_ids, tok.bos, a.n_ctx)
    # A fixed slice of the training text of the same size, for the train/held-out gap.
    tr_nll, _ = eval_windows(model, train_ids[:len(held_ids)].tolist(), tok.bos, a.n_ctx)
    prompt_ids = [tok.bos] + tok.encode(a.prompt)
    cont = greedy(model, prompt_ids, a.n_predict)
    print("held-out NLL %.4f (ppl %.3f) over %d tokens; train-slice NLL %.4f; train %.0f s"
          % (held_nll, math.exp(held_nll), held_n, tr_nll, train_time))
    print("greedy: %r" % (a.prompt + tok.decode(cont)))

    os.makedirs(a.out_dir, exist_ok=True)
    if a.ckpt:
        torch.save({"config": c, "merges": merges, "state": model.state_dict()}, a.ckpt)
    sys.path.insert(0, HERE)
    import export_gguf  # noqa: E402
    gguf_path = os.path.join(a.out_dir, a.name + ".gguf")
    export_gguf.export(model, tok, gguf_path, name=a.name)
    with open(os.path.join(a.out_dir, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write(held_text)
    ref = {
        "model": os.path.basename(gguf_path),
        "regenerate": "/usr/bin/python3 deploy/train/train_bitnet.py --out-dir deploy/models",
        "heldout": "heldout.txt",
        "windows": "token stream without BOS, consecutive windows of n_ctx-1 tokens, each fed as [BOS]+window, "
                   "every token scored once",
        "n_ctx": a.n_ctx,
        "heldout_tokens": held_n,
        "heldout_nll": held_nll,
        "heldout_ppl": math.exp(held_nll),
        "heldout_token_ids": held_ids,
        "train_slice_nll": tr_nll,
        "unigram_entropy": unigram_nll,
        "prompt": a.prompt,
        "prompt_ids": prompt_ids,
        "greedy_ids": cont,
        "greedy_text": tok.decode(cont),
        "settings": {k: v for k, v in vars(a).items() if k not in ("out_dir", "ckpt", "time_only")} | {
            "vocab_actual": c["vocab"], "train_tokens": len(train_ids), "train_seconds": round(train_time),
            "final_train_loss_ema": ema, "torch": torch.__version__},
    }
    with open(os.path.join(a.out_dir, a.name + ".ref.json"), "w") as f:
        # One key per line, but the id lists on one line each.
        f.write(regex.sub(r"(?<=[\d,\[])\s*\n\s*(?=[-\d\]])", "", json.dumps(ref, indent=1)) + "\n")
    print("wrote %s, heldout.txt, %s.ref.json" % (gguf_path, a.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
