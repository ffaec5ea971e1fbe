"""Generator for a tiny, random-weight, but fully valid llama GGUF model.

The model is meant for tests and benchmarks of the serving stack: llama.cpp
loads it in a few milliseconds and decodes thousands of tokens per second on
a small CPU, and it is written deterministically from a seed, so nothing is
ever downloaded.

Design choices
--------------

Architecture
    Plain ``llama``: 2 blocks, hidden size 64, 4 attention heads of size 16
    (4 KV heads, no GQA), FFN size 192, context length 4096 so a prompt plus a
    2,000+ token generation fits. All tensors are F32 (file type ALL_F32);
    the whole file is about 1.3 MB (~313k parameters, 1,607 tokens).

Vocabulary (SentencePiece-style ``llama`` tokenizer)
    * ids 0, 1, 2 are ``<unk>``, ``<s>`` (BOS) and ``</s>`` (EOS), as in the
      original LLaMA vocab;
    * ids 3..258 are the 256 byte-fallback tokens ``<0x00>``..``<0xFF>``
      (token type BYTE), so *any* UTF-8 text tokenizes, emoji and CJK included
      (characters that are not in the vocab are encoded byte by byte);
    * then the single characters of printable ASCII plus ``"▁"`` (U+2581, the
      SentencePiece space marker), so ASCII text never needs byte fallback;
    * then a few hundred common English words as ``"▁word"`` pieces (plus
      capitalised variants of the most common ones) and common suffixes
      (``ing``, ``ed``, ``tion``...). llama.cpp's SPM tokenizer starts from
      single characters and repeatedly merges the adjacent pair whose
      concatenation is in the vocab with the highest score, so every piece
      must be reachable through a chain of pieces that are themselves in the
      vocab: every prefix of every word/suffix piece is added too (``"▁t"``,
      ``"▁th"``, ``"▁the"``). Scores are negative ranks, with whole words
      scored above prefixes and ``"▁"``-pieces above suffixes, so ordinary
      English prompts tokenize into roughly one token per word.

Weights
    Random normal, from ``numpy.random.default_rng(seed)``; the same seed
    always gives a byte-identical file. The output projection is scaled so
    that logits have a spread of a few nats: sampling at temperature 0.8
    gives varied output, and greedy decoding does not sit on one token.

Why EOS (and the other special tokens) are never sampled
    Tests ask for e.g. 2,000 tokens and must get exactly that many, so the
    model must never end the generation by itself. Hidden dimension 0 is a
    constant "bias" channel:

    * ``token_embd[:, 0] = 1`` for every token;
    * the rows of ``attn_output`` and ``ffn_down`` that write into dimension 0
      are zero, so the residual stream keeps ``x[0] == 1`` exactly, in every
      layer and at every position;
    * all RMSNorm weights are positive (1.0), and the other hidden dims have
      RMS of order 1, so after the final norm dimension 0 is a positive value
      of order 1;
    * ``output.weight[t, 0]`` is therefore a per-token logit bias. It is
      ``-1000`` for ``<unk>``, ``<s>`` and ``</s>``: their logits are always
      hundreds of nats below every other token's, so they are never sampled
      (probability ~ exp(-100s)) and never the greedy choice.

    The same bias channel is used to shape the output: whole-word pieces get
    a positive bias, printable ASCII byte tokens a negative one, and bytes
    that are control characters or non-ASCII (0x80..0xFF) a strongly negative
    one. Generated text is mostly space-separated English words; invalid UTF-8
    (a lone 0x80..0xFF byte) is rare but possible, which the server must
    handle anyway.

Caveats of llama.cpp's handling of this vocab
    * Tokenizing adds a space prefix (``add_space_prefix``) and turns spaces
      into ``"▁"``, so ``"Hello world"`` is ``[<s>, "▁Hello", "▁world"]``;
      detokenizing turns ``"▁"`` back into a space, and drops the added
      leading space right after BOS, so text round-trips exactly. Pieces
      detokenized one at a time keep their leading space (``" Hello"``), and
      generated text therefore usually starts with a space.
    * Byte tokens detokenize to their raw byte; a multi-byte character
      detokenized one token at a time gives invalid UTF-8 fragments.
    * ``<s>``, ``</s>`` and ``<unk>`` detokenize to nothing unless
      ``special=True`` is asked for (then ``"<s>"`` etc.).
    * No chat template is stored; llama-cpp-python falls back to its default
      (llama-2 style) chat format for chat completions.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

import gguf
import numpy as np
import numpy.typing as npt

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "N_VOCAB",
    "TINY_MODEL_VERSION",
    "UNK_ID",
    "tiny_model_path",
    "tiny_vocab",
    "write_tiny_model",
]

#: Bump whenever the generated file changes, so cached copies are not reused.
TINY_MODEL_VERSION = 1

UNK_ID = 0
BOS_ID = 1
EOS_ID = 2
SPACE = "\u2581"  # SentencePiece space marker "▁"

CONTEXT_LENGTH = 4096
N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 4
N_FF = 192
HEAD_DIM = N_EMBD // N_HEAD
RMS_EPS = 1e-5
ROPE_FREQ_BASE = 10000.0

#: Logit bias (through the constant channel) of the special tokens.
SPECIAL_BIAS = -1000.0
#: Logit bias of whole-word pieces, sub-word pieces, printable ASCII bytes and
#: other bytes respectively (in units of the normalised channel 0).
WORD_BIAS = 2.5
SUBWORD_BIAS = -1.0
ASCII_BYTE_BIAS = -3.0
OTHER_BYTE_BIAS = -9.0
#: Standard deviation of the non-bias part of the logits.
LOGIT_SCALE = 3.0

_WORDS = """
the of and to a in is it you that he was for on are with as I his they be at
one have this from or had by not word but what some we can out other were all
there when up use your how said an each she which do their time if will way
about many then them write would like so these her long make thing see him two
has look more day could go come did number sound no most people my over know
water than call first who may down side been now find any new work part take
get place made live where after back little only round man year came show
every good me give our under name very through just form sentence great think
say help low line differ turn cause much mean before move right boy old too
same tell does set three want air well also play small end put home read hand
port large spell add even land here must big high such follow act why ask men
change went light kind off need house picture try us again animal point mother
world near build self earth father head stand own page should country found
answer school grow study still learn plant cover food sun four between state
keep eye never last let thought city tree cross farm hard start might story saw
far sea draw left late run while press close night real life few north open
seem together next white children begin got walk example ease paper group
always music those both mark often letter until mile river car feet care second
book carry took science eat room friend began idea fish mountain stop once base
hear horse cut sure watch color face wood main enough plain girl usual young
ready above ever red list though feel talk bird soon body dog family direct
pose leave song measure door product black short numeral class wind question
happen complete ship area half rock order fire south problem piece told knew
pass since top whole king space heard best hour better true during hundred five
remember step early hold west ground interest reach fast verb sing listen six
table travel less morning ten simple several vowel toward war lay against
pattern slow center love person money serve appear road map rain rule govern
pull cold notice voice unit power town fine certain fly fall lead cry dark
machine note wait plan figure star box noun field rest correct able pound done
beauty drive stood contain front teach week final gave green oh quick develop
ocean warm free minute strong special mind behind clear tail produce fact
hello model server token test request response stream bee hive honey queen
""".split()

_CAPITALISED = """
the a i it he she we they you this that there what when where how why hello
in on and but if so my our your one new
""".split()

_SUFFIXES = """
s es ed ing er est ly tion sion ment ness ful less able ible al ial ous ive
ity y ies en ize ise ism ist ance ence ant ent ary ory ic ical
""".split()

_PIECE_NORMAL = int(gguf.TokenType.NORMAL)
_PIECE_BYTE = int(gguf.TokenType.BYTE)
_PIECE_CONTROL = int(gguf.TokenType.CONTROL)
_PIECE_UNKNOWN = int(gguf.TokenType.UNKNOWN)


def tiny_vocab() -> tuple[list[str], list[float], list[int], list[float]]:
    """Return ``(tokens, scores, token_types, logit_biases)`` of the vocab."""
    tokens: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    biases: list[float] = []
    seen: set[str] = set()

    def add(piece: str, score: float, ttype: int, bias: float) -> None:
        if piece in seen:
            return
        seen.add(piece)
        tokens.append(piece)
        scores.append(score)
        types.append(ttype)
        biases.append(bias)

    add("<unk>", 0.0, _PIECE_UNKNOWN, SPECIAL_BIAS)
    add("<s>", 0.0, _PIECE_CONTROL, SPECIAL_BIAS)
    add("</s>", 0.0, _PIECE_CONTROL, SPECIAL_BIAS)
    for b in range(256):
        printable = 0x20 <= b < 0x7F or b in (0x09, 0x0A)
        add(f"<0x{b:02X}>", 0.0, _PIECE_BYTE, ASCII_BYTE_BIAS if printable else OTHER_BYTE_BIAS)

    # Single characters: never the result of a merge, so their score does not
    # matter for tokenization; keep them below every multi-character piece.
    add(SPACE, -100000.0, _PIECE_NORMAL, SUBWORD_BIAS)
    for c in range(0x21, 0x7F):
        ch = chr(c)
        add(ch, -100000.0, _PIECE_NORMAL, WORD_BIAS if ch in ".,!?" else SUBWORD_BIAS)

    words: list[str] = [SPACE + w for w in _WORDS]
    words += [SPACE + w[0].upper() + w[1:] for w in _CAPITALISED]
    whole = set(words)
    # Rank: words in frequency order first, suffixes after.
    ranked: list[tuple[str, bool]] = [(w, True) for w in words] + [(s, False) for s in _SUFFIXES]
    rank = 0
    for piece, is_word in ranked:
        # Every prefix (of length >= 2) must be in the vocab so SPM merging can
        # reach the piece. A prefix's score is below that of the full piece.
        for end in range(2, len(piece) + 1):
            prefix = piece[:end]
            full = end == len(piece)
            base = 0.0 if is_word else -50000.0
            score = base - rank - (0.0 if full else 20000.0)
            if prefix in whole:
                bias = WORD_BIAS
            elif not is_word and full:
                bias = 0.0
            else:
                bias = SUBWORD_BIAS
            add(prefix, score, _PIECE_NORMAL, bias)
        rank += 1
    return tokens, scores, types, biases


N_VOCAB = len(tiny_vocab()[0])

_F32 = npt.NDArray[np.float32]


def _normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> _F32:
    return (rng.standard_normal(shape) * std).astype(np.float32)


def write_tiny_model(path: pathlib.Path, *, seed: int = 0) -> pathlib.Path:
    """Write the tiny llama GGUF model to ``path`` and return ``path``.

    Deterministic: the same ``seed`` always produces a byte-identical file.
    """
    path = pathlib.Path(path)
    tokens, scores, types, biases = tiny_vocab()
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("rbee-tiny")
    writer.add_description(f"rbee tiny random test model v{TINY_MODEL_VERSION} (seed {seed})")
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    writer.add_vocab_size(n_vocab)
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(ROPE_FREQ_BASE)
    writer.add_layer_norm_rms_eps(RMS_EPS)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(True)

    # numpy arrays are (rows, cols) = (out, in) for linear layers; ggml's ne
    # is the reverse, i.e. ne = [in, out] as llama.cpp expects.
    emb = _normal(rng, (n_vocab, N_EMBD), 1.0)
    emb[:, 0] = 1.0  # constant bias channel
    writer.add_tensor("token_embd.weight", emb)

    s_in = 1.0 / np.sqrt(N_EMBD)
    n_kv = HEAD_DIM * N_HEAD_KV
    for layer in range(N_LAYER):
        p = f"blk.{layer}."
        writer.add_tensor(p + "attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(p + "attn_q.weight", _normal(rng, (N_EMBD, N_EMBD), 2.0 * s_in))
        writer.add_tensor(p + "attn_k.weight", _normal(rng, (n_kv, N_EMBD), 2.0 * s_in))
        writer.add_tensor(p + "attn_v.weight", _normal(rng, (n_kv, N_EMBD), s_in))
        wo = _normal(rng, (N_EMBD, N_EMBD), s_in)
        wo[0, :] = 0.0  # never write into the bias channel
        writer.add_tensor(p + "attn_output.weight", wo)
        writer.add_tensor(p + "ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(p + "ffn_gate.weight", _normal(rng, (N_FF, N_EMBD), s_in))
        writer.add_tensor(p + "ffn_up.weight", _normal(rng, (N_FF, N_EMBD), s_in))
        wd = _normal(rng, (N_EMBD, N_FF), 1.0 / np.sqrt(N_FF))
        wd[0, :] = 0.0  # never write into the bias channel
        writer.add_tensor(p + "ffn_down.weight", wd)

    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    out = _normal(rng, (n_vocab, N_EMBD), LOGIT_SCALE * s_in)
    out[:, 0] = np.asarray(biases, dtype=np.float32)
    writer.add_tensor("output.weight", out)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_model_path(cache_dir: pathlib.Path) -> pathlib.Path:
    """Return the path of the tiny model in ``cache_dir``, writing it if absent.

    The file is written under a temporary name and atomically renamed, so
    concurrent callers (e.g. pytest-xdist workers) never see a partial file.
    """
    cache_dir = pathlib.Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"tiny-llama-v{TINY_MODEL_VERSION}.gguf"
    if path.is_file():
        return path
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=cache_dir)
    os.close(fd)
    tmp = pathlib.Path(tmp_name)
    try:
        write_tiny_model(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
