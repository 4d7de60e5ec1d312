/* tern-synth.h: synthetic BitNet b1.58 models, written as GGUF in
 * bitnet.cpp's own layout (MODEL-FORMATS 2.4): I2_S ternary projections with
 * the per-tensor scale in the tail, F16 token_embd, F32 norms, no output
 * tensor (tied), the hyper-parameter keys of hp->arch ("bitnet-b1.58.*", or
 * "llama.*" for the Llama-style presets, whose GGUF has no sub-norms and q/k
 * rows in the interleaved order bitnet.cpp's converter writes, tern_arch),
 * and tokenizer metadata for a small byte-level BPE ("gpt2") vocabulary.
 * tern_synth_ternary_rows gives the matrices in HF order either way, which is
 * what tern_source reads back.
 *
 * Every value is a pure function of (seed, tensor, index) through a
 * counter-based hash, so any tensor (or row range) can be regenerated on its
 * own; the writer streams tensor by tensor with memory bounded by one row
 * block, never the whole model. Statistics keep a forward pass finite: ~1/3
 * zero weights, scale ~ 1/sqrt(k) (with a +-25% per-tensor variation),
 * norm weights in [0.9, 1.1], embeddings ~ N(0, sigma) with
 * sigma = min(1, 2/sqrt(n_embd)).
 *
 * Synthetic vocabulary (n_vocab >= 256 + specials): special tokens sit at
 * bos_id / eos_id / eot_id of the hparams (when >= 0): "<|begin_of_text|>",
 * "<|end_of_text|>", "<|eot_id|>" (CONTROL); the 256 byte tokens (GPT-2
 * byte-to-unicode form, NORMAL) fill the lowest free ids in byte order; then
 * tokens made by a fixed list of merges over common English fragments
 * (NORMAL); the rest are "<|reserved_special_token_N|>" (CONTROL).
 * tokenizer.ggml.pre = "llama-bpe", add_bos_token = true. */
#ifndef TERN_SYNTH_H
#define TERN_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "tern-base.h"
#include "tern-model.h"
#include "tern-source.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Progress: bytes written so far and the file's total. Called at most a few
 * times per tensor; never with done > total. */
typedef void (*tern_synth_progress_fn)(void *ud, uint64_t done, uint64_t total);

typedef struct tern_synth_opts {
	uint32_t gguf_version;           /* 2 or 3; 0 = 3 */
	int n_merges;                    /* cap on the synthetic merges; <= 0: as many as the list gives (default) */
	tern_synth_progress_fn progress; /* may be NULL */
	void *progress_ud;
} tern_synth_opts;

/* Writes the model described by *hp (validated first; hp->n_layer may be cut
 * by the caller to 1..8 for tests; head_dim must equal n_embd/n_head) to
 * `path` (via path.tmp, renamed when complete). opts may be NULL. Also
 * requires n_embd*n_embd, n_embd*kv_width, n_embd*n_ff to be multiples of
 * 128 (I2_S blocks). */
int tern_synth_write(const char *path, const tern_hparams *hp, uint64_t seed, const tern_synth_opts *opts,
		     tern_err *err);

/* Exact size of the file tern_synth_write would produce (for progress/plans). */
uint64_t tern_synth_file_bytes(const tern_hparams *hp, const tern_synth_opts *opts);

/* Applies "key=value[,key=value...]" overrides to *hp, keys: n_embd, n_layer
 * (or layers), n_head, n_head_kv, n_ff, n_vocab, n_ctx, rope_theta, norm_eps,
 * bos, eos, eot. head_dim is recomputed. Then tern_hparams_validate. For the
 * `tern-partition synth` CLI: start from tern_hparams_preset, then this. */
int tern_synth_override(tern_hparams *hp, const char *spec, tern_err *err);

/* ---- the generator's value functions (what the file holds) ------------- */

/* Ternary weights of projection p of layer `layer`, rows [row0,row0+nrows)
 * of the m x k matrix (tern_proj_shape), into w (nrows*k). */
void tern_synth_ternary_rows(uint64_t seed, const tern_hparams *hp, int layer, tern_proj p, int64_t row0, int64_t nrows,
			     int8_t *w);
/* The per-tensor scale written to the I2_S tail. */
float tern_synth_scale(uint64_t seed, const tern_hparams *hp, int layer, tern_proj p);
/* Norm weight element i (stored as f32). */
float tern_synth_norm(uint64_t seed, int layer, tern_norm_kind n, int64_t i);
/* Embedding element (token, i) as stored: an F16 value. */
uint16_t tern_synth_embd_f16(uint64_t seed, const tern_hparams *hp, int64_t token, int64_t i);

#ifdef __cplusplus
}
#endif
#endif /* TERN_SYNTH_H */
