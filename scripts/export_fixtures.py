#!/usr/bin/env python3
"""Exports the Differential Transformer attention blocks to MLIR fixtures.

Builds, in plain PyTorch, the attention blocks of the public reference modules
(microsoft/unilm, Diff-Transformer/): the V2 block of
Diff-Transformer-V2/multihead_flashdiffv2.py (also in its baseline mode,
use_diff_v2=False: standard attention, which must stay unfused) and the V1
block of multihead_flashdiff_1.py. The attention cores are our own
re-implementation with torch.matmul/softmax (as the references' non-flash
paths compute them), not the flash_attn kernels: causal masking by an additive
triu(-inf) mask, GQA by expanding K/V (repeat_kv), RoPE interleaved.

Each block is exported through torch-mlir (PyPI `torch-mlir`, FX importer) to
linalg-on-tensors and to TOSA and written to test/Fusion/Inputs/. Post-
processing, so that MLIR 22's diffattn-opt parses the files:
  * `dense_resource<...>` weights are rewritten as inline `dense<"0x...">`
    constants and the `dialect_resources` section is dropped (the e2e tests
    lower the graphs to LLVM, which needs plain dense constants);
  * the module is printed in generic form only if the pretty form fails to
    parse (not needed with torch-mlir 20261001 / torch 2.15.0).

Not run by CI; the fixtures it writes are committed. Usage:
    python3 -m venv /tmp/tm && /tmp/tm/bin/pip install torch torch-mlir
    /tmp/tm/bin/python scripts/export_fixtures.py [OUT_DIR]
"""
import argparse
import math
import os
import re
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch_mlir import fx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture_modules as fm  # noqa: E402

BSZ, SEQ = 1, 16


def rope_interleaved(x, cos, sin):
    """Rotary embedding on adjacent pairs (x0, x1) of the last dim."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    r0 = x0 * c - x1 * s
    r1 = x0 * s + x1 * c
    return torch.stack((r0, r1), dim=-1).flatten(-2)


def expand_heads(x, n_rep):
    """[B, Hkv, S, D] -> [B, Hkv * n_rep, S, D], each KV head repeated n_rep
    times in a row (what flash_attn's GQA reads)."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def causal_softmax_attention(q, k, v, scale):
    """q [B, Hq, S, D], k/v [B, Hq, S, *]; causal, bottom-right aligned."""
    tgt, src = q.shape[2], k.shape[2]
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    mask = torch.triu(torch.full((tgt, src), float("-inf")), 1 + src - tgt)
    probs = F.softmax(scores + mask, dim=-1)
    return torch.matmul(probs, v)


class DiffAttnV2Block(nn.Module):
    """multihead_flashdiffv2.MultiheadFlashDiffV2 with a plain attention core."""

    def __init__(self, use_diff_v2, d_model, num_heads, num_kv_heads, head_dim):
        super().__init__()
        self.use_diff_v2 = use_diff_v2
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.num_q_heads = 2 * num_heads if use_diff_v2 else num_heads
        self.q_proj = nn.Linear(d_model, self.num_q_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, d_model, bias=False)
        self.lambda_proj = nn.Linear(d_model, num_heads, bias=False) if use_diff_v2 else None

    def forward(self, x, cos, sin):
        bsz, n, _ = x.shape
        q = self.q_proj(x).view(bsz, n, self.num_q_heads, self.head_dim)
        k = self.k_proj(x).view(bsz, n, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(bsz, n, self.num_kv_heads, self.head_dim)
        q, k = rope_interleaved(q, cos, sin), rope_interleaved(k, cos, sin)
        rep = self.num_q_heads // self.num_kv_heads
        attn = causal_softmax_attention(
            q.transpose(1, 2), expand_heads(k.transpose(1, 2), rep),
            expand_heads(v.transpose(1, 2), rep), self.head_dim ** -0.5).transpose(1, 2)
        if self.use_diff_v2:
            lam = self.lambda_proj(x)
            attn = attn[:, :, 0::2] - torch.sigmoid(lam).unsqueeze(-1) * attn[:, :, 1::2]
        return self.o_proj(attn.reshape(bsz, n, self.num_heads * self.head_dim))


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class DiffAttnV1Block(nn.Module):
    """multihead_flashdiff_1.MultiheadFlashDiff1 with a plain attention core."""

    def __init__(self, embed_dim, depth, num_heads, num_kv_heads):
        super().__init__()
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.n_rep = num_heads // num_kv_heads
        self.head_dim = embed_dim // num_heads // 2
        self.scaling = self.head_dim ** -0.5
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.k_proj = nn.Linear(embed_dim, embed_dim // self.n_rep, bias=False)
        self.v_proj = nn.Linear(embed_dim, embed_dim // self.n_rep, bias=False)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * depth)
        self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2 = (
            nn.Parameter(torch.randn(self.head_dim) * 0.1) for _ in range(4))
        self.subln = RMSNorm(2 * self.head_dim, eps=1e-5)

    def forward(self, x, cos, sin):
        bsz, n, embed_dim = x.shape
        h, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x).view(bsz, n, 2 * h, d)
        k = self.k_proj(x).view(bsz, n, 2 * hkv, d)
        v = self.v_proj(x).view(bsz, n, hkv, 2 * d)
        q, k = rope_interleaved(q, cos, sin), rope_interleaved(k, cos, sin)
        q = q.reshape(bsz, n, h, 2, d)
        k = k.reshape(bsz, n, hkv, 2, d)
        q1, q2 = q[:, :, :, 0], q[:, :, :, 1]
        k1, k2 = k[:, :, :, 0], k[:, :, :, 1]
        vt = expand_heads(v.transpose(1, 2), self.n_rep)
        attn1 = causal_softmax_attention(
            q1.transpose(1, 2), expand_heads(k1.transpose(1, 2), self.n_rep), vt,
            self.scaling).transpose(1, 2)
        attn2 = causal_softmax_attention(
            q2.transpose(1, 2), expand_heads(k2.transpose(1, 2), self.n_rep), vt,
            self.scaling).transpose(1, 2)
        lambda_1 = torch.exp(torch.sum(self.lambda_q1 * self.lambda_k1, dim=-1))
        lambda_2 = torch.exp(torch.sum(self.lambda_q2 * self.lambda_k2, dim=-1))
        lambda_full = lambda_1 - lambda_2 + self.lambda_init
        attn = attn1 - lambda_full * attn2
        attn = self.subln(attn) * (1 - self.lambda_init)
        return self.out_proj(attn.reshape(bsz, n, h * 2 * d))


def rope_tables(seq, dim):
    inv = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    ang = torch.arange(seq).float()[:, None] * inv[None, :]
    return torch.cos(ang), torch.sin(ang)


def inline_resources(text):
    """dense_resource<name> -> dense<"0x..."> and drop the resource section."""
    blobs = dict(re.findall(r'^\s*([\w.]+): "0x([0-9A-Fa-f]+)"', text, re.M))
    def repl(m):
        hexdata = blobs[m.group(1)][8:]  # the first 4 bytes are the alignment
        return f'dense<"0x{hexdata}">'
    text = re.sub(r"dense_resource<([\w.]+)>", repl, text)
    return re.sub(r"\n\{-#\s*dialect_resources:.*?#-\}\n?", "\n", text, flags=re.S)


def export(module, name, out_dir, head_dim):
    cos, sin = rope_tables(SEQ, head_dim)
    x = torch.randn(BSZ, SEQ, module.q_proj.in_features)
    with torch.no_grad():
        for kind, suffix in (("linalg-on-tensors", "linalg"), ("tosa", "tosa")):
            m = fx.export_and_import(module, x, cos, sin, output_type=kind, func_name=name)
            write_fixture(os.path.join(out_dir, f"{name}.{suffix}.mlir"), m,
                          f", output_type={kind})")


class V2Core(nn.Module):
    """The V2 attention core alone, (q, k, v, lam) -> out, in the variants the
    fusion must accept or refuse (see VARIANTS)."""

    def __init__(self, **variant):
        super().__init__()
        self.v = variant

    def forward(self, q, k, v, lam):
        o = self.v
        b, s, h2, d = q.shape
        rep = h2 // k.shape[2]
        scale = d ** -0.5
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if o.get("repeat"):  # head j reads KV head j % Hkv: pairs split
            kt, vt = kt.repeat(1, rep, 1, 1), vt.repeat(1, rep, 1, 1)
        elif o.get("repeat_interleave"):
            kt = torch.repeat_interleave(kt, rep, dim=1)
            vt = torch.repeat_interleave(vt, rep, dim=1)
        else:
            kt, vt = expand_heads(kt, rep), expand_heads(vt, rep)
        if o.get("scale_in_q"):
            qt = qt * scale
            scores = torch.matmul(qt, kt.transpose(-1, -2))
        else:
            scores = torch.matmul(qt, kt.transpose(-1, -2)) * scale
        pos = torch.arange(s)
        mask = o.get("mask", "additive")
        if mask == "additive":
            scores = scores + torch.triu(torch.full((s, s), float("-inf")), 1)
        elif mask == "select":  # masked_fill on an iota comparison
            scores = scores.masked_fill(pos[None, :] > pos[:, None], float("-inf"))
        elif mask == "constant":  # a constant boolean tensor
            allowed = torch.tensor([[1 if t <= i else 0 for t in range(s)] for i in range(s)],
                                   dtype=torch.bool)
            scores = scores.masked_fill(~allowed, -1e9)
        elif mask == "window":
            far = (pos[None, :] > pos[:, None]) | (pos[None, :] < pos[:, None] - 3)
            scores = scores.masked_fill(far, float("-inf"))
        elif mask == "strided":  # every other key: not a band
            odd = (pos[None, :] % 2 == 1) & (pos[None, :] != pos[:, None])
            scores = scores.masked_fill(odd, float("-inf"))
        probs = F.softmax(scores, dim=o.get("softmax_dim", -1))
        attn = torch.matmul(probs, vt).transpose(1, 2)
        a1, a2 = attn[:, :, 0::2], attn[:, :, 1::2]
        gate = lam.unsqueeze(-1) if o.get("no_sigmoid") else torch.sigmoid(lam).unsqueeze(-1)
        if o.get("swapped"):
            return gate * a2 - a1
        return a1 - gate * a2


VARIANTS = {
    # fused
    "v2_core_select_mask": dict(mask="select"),
    "v2_core_constant_mask": dict(mask="constant"),
    "v2_core_window": dict(mask="window"),
    "v2_core_no_mask": dict(mask="none"),
    "v2_core_scale_in_q": dict(scale_in_q=True),
    "v2_core_repeat_interleave": dict(repeat_interleave=True),
    # near misses
    "miss_kv_not_shared": dict(repeat=True),
    "miss_no_sigmoid": dict(no_sigmoid=True),
    "miss_strided_mask": dict(mask="strided"),
    "miss_swapped": dict(swapped=True),
    "miss_softmax_axis": dict(softmax_dim=-2),
}


def write_fixture(path, module, provenance):
    """Writes `module` (torch-mlir's import, resources inlined) to `path`
    under a "Generated by" line that ends with `provenance`; prints the
    path."""
    with open(path, "w") as f:
        f.write(f"// Generated by scripts/export_fixtures.py (torch {torch.__version__}, "
                f"torch-mlir FX importer{provenance}; do not edit.\n")
        f.write(inline_resources(str(module)))
    print(path)


def export_cores(out_dir):
    b, s, h, hkv, d = 1, 8, 2, 2, 4
    args = (torch.randn(b, s, 2 * h, d), torch.randn(b, s, hkv, d),
            torch.randn(b, s, hkv, d), torch.randn(b, s, h))
    for name, variant in VARIANTS.items():
        m = fx.export_and_import(V2Core(**variant), *args, output_type="linalg-on-tensors",
                                 func_name=name)
        write_fixture(os.path.join(out_dir, f"{name}.linalg.mlir"), m, f"): V2Core({variant})")
    # Bad input: f64 (no fused op for it).
    m = fx.export_and_import(V2Core(), *(a.double() for a in args),
                             output_type="linalg-on-tensors", func_name="miss_f64")
    write_fixture(os.path.join(out_dir, "miss_f64.linalg.mlir"), m, "): V2Core() on bad input")
    export_core_dynamic(out_dir, args)


def export_core_dynamic(out_dir, args):
    """V2Core with a dynamic sequence length: torch-mlir reads torch's one
    symbol through a different tensor.dim per argument, so q's and v's
    broadcasts select on sizes the fusion cannot prove equal to k's."""
    seq = torch.export.Dim("seq", min=2, max=64)
    m = fx.export_and_import(V2Core(), *args, output_type="linalg-on-tensors",
                             func_name="v2_core_dynamic",
                             dynamic_shapes=({1: seq}, {1: seq}, {1: seq}, {1: seq}))
    write_fixture(os.path.join(out_dir, "v2_core_dynamic.linalg.mlir"), m,
                  "): V2Core(), dynamic sequence length")


class DecoderLayer(nn.Module):
    """A pre-norm decoder layer around the V2 block: RMSNorm, V2 attention
    (projections, RoPE, lambda), residual, RMSNorm, SwiGLU MLP, residual."""

    def __init__(self, d_model=32, num_heads=4, num_kv_heads=2, head_dim=8, hidden=64):
        super().__init__()
        self.q_proj = nn.Linear(d_model, d_model)  # in_features for export()
        self.norm1, self.norm2 = RMSNorm(d_model), RMSNorm(d_model)
        self.attn = DiffAttnV2Block(True, d_model, num_heads, num_kv_heads, head_dim)
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x, cos, sin):
        h = x + self.attn(self.norm1(x), cos, sin)
        y = self.norm2(h)
        return h + self.down(F.silu(self.gate(y)) * self.up(y))


def export_decoder_layer(path):
    layer = DecoderLayer().eval()
    cos, sin = rope_tables(SEQ, 8)
    x = torch.randn(BSZ, SEQ, 32)
    with torch.no_grad():
        m = fx.export_and_import(layer, x, cos, sin, output_type="linalg-on-tensors",
                                 func_name="decoder_layer")
    with open(path, "w") as f:
        f.write("// A Differential Transformer V2 decoder layer in linalg on tensors:\n"
                "// RMSNorm, Q/K/V/lambda projections, interleaved RoPE, V2 attention\n"
                "// (8 query heads in 4 pairs, 2 KV heads, head dim 8, causal), output\n"
                "// projection, residual, RMSNorm, SwiGLU MLP, residual. B = 1, S = 16,\n"
                "// d_model = 32. Generated by scripts/export_fixtures.py (torch-mlir).\n"
                "//\n"
                "// The lit tests fuse-e2e-cpu.test (fused and unfused runs compared)\n"
                "// and diffattn-compile's fuse.test compile and run it.\n")
        f.write(inline_resources(str(m)))
    print(path)


def export_module(module, args, out_dir, name, kinds=("linalg",), dynamic_shapes=None,
                  decomposition_table=None, provenance="", keep_resources=False):
    """Exports `module(*args)` to `name.<kind>.mlir` for each kind."""
    for kind in kinds:
        output_type = {"linalg": "linalg-on-tensors", "tosa": "tosa"}[kind]
        with torch.no_grad():
            m = fx.export_and_import(module, *args, output_type=output_type, func_name=name,
                                     dynamic_shapes=dynamic_shapes,
                                     decomposition_table=decomposition_table)
        path = os.path.join(out_dir, f"{name}.{kind}.mlir")
        if keep_resources:
            with open(path, "w") as f:
                f.write(f"// Generated by scripts/export_fixtures.py (torch {torch.__version__}, "
                        f"torch-mlir FX importer, output_type={output_type}){provenance}; "
                        "do not edit.\n")
                f.write(str(m))
            print(path)
        else:
            write_fixture(path, m, f", output_type={output_type}){provenance}")


def table_without_linear():
    """torch-mlir's default decomposition table without aten.linear: its
    dynamic-shape lowering of linear's view reads only B rows (NaN for
    S > 1), an upstream bug."""
    from torch_mlir.extras.fx_decomp_util import get_decomposition_table
    table = get_decomposition_table()
    return {op: fn for op, fn in table.items()
            if "aten.linear" not in str(op)}


def export_sdpa(out_dir):
    """Point 1 of issue 13: the V2 attention in the reference's style with
    flash_attn_func replaced by SDPA, in its variants; V1 likewise; near
    misses."""
    torch.manual_seed(1)
    b, s, d_model, h, hkv, d = 2, 16, 64, 4, 2, 8
    cos, sin = fm.rope_tables(s, d)
    x = torch.randn(b, s, d_model)
    cases = {
        "sdpa_v2_gqa_causal": (dict(), ("linalg", "tosa")),
        "sdpa_v2_repeat_interleave": (dict(gqa="repeat_interleave"), ("linalg",)),
        "sdpa_v2_full": (dict(mask="none"), ("linalg", "tosa")),
        "sdpa_v2_bool_mask": (dict(mask="bool"), ("linalg",)),
        "sdpa_v2_additive_mask": (dict(mask="additive"), ("linalg", "tosa")),
        "sdpa_v2_scale_view": (dict(scale=0.3, pairing="view"), ("linalg",)),
    }
    for name, (kw, kinds) in cases.items():
        m = fm.V2SDPAAttention(d_model, h, hkv, d, **kw).eval()
        export_module(m, (x, cos, sin), out_dir, name, kinds, provenance=f": V2SDPAAttention({kw})")
    m = fm.V2SDPAAttention(d_model, h, hkv, d).to(torch.bfloat16).eval()
    export_module(m, (x.bfloat16(), cos.bfloat16(), sin.bfloat16()), out_dir, "sdpa_v2_bf16",
                  ("linalg", "tosa"), provenance=": V2SDPAAttention() in bf16")
    v1 = fm.V1SDPAAttention(embed_dim=64, depth=3, num_heads=4, num_kv_heads=2).eval()
    with torch.no_grad():
        v1.subln.weight.copy_(1.0 + 0.1 * torch.randn(v1.subln.weight.shape))
    export_module(v1, (x, cos, sin), out_dir, "sdpa_v1", ("linalg", "tosa"),
                  provenance=": V1SDPAAttention")
    export_sdpa_dynamic(out_dir, (x, cos, sin), (d_model, h, hkv, d))
    # Near misses: dropout in training mode, a runtime padding mask, and
    # standard attention through SDPA (no difference: no remark).
    m = fm.V2SDPAAttention(d_model, h, hkv, d, dropout=0.1).train()
    export_module(m, (x, cos, sin), out_dir, "miss_sdpa_dropout", ("linalg",),
                  provenance=": V2SDPAAttention(dropout=0.1) in training mode")
    q, k, v = torch.randn(b, s, 2 * h, d), torch.randn(b, s, hkv, d), torch.randn(b, s, hkv, d)
    lam = torch.randn(b, s, h)
    pad = torch.ones(b, s, dtype=torch.bool)
    pad[1, -3:] = False
    export_module(fm.V2SDPACore(padding_mask=True), (q, k, v, lam, pad), out_dir,
                  "miss_sdpa_padding_mask", ("linalg",), provenance=": V2SDPACore(padding_mask)")
    export_module(fm.V2SDPACore(standard=True), (q, k, v, lam), out_dir, "sdpa_standard",
                  ("linalg",), provenance=": V2SDPACore(standard)")


def export_sdpa_dynamic(out_dir, args, sizes):
    """The SDPA module with dynamic batch and sequence length (aten.linear
    kept out of the decomposition table): enable_gqa + causal in f32, and
    repeat_interleave without a mask in bf16."""
    x, cos, sin = args
    bd = torch.export.Dim("batch", min=1, max=64)
    sd = torch.export.Dim("seq", min=2, max=4096)
    dyn = ({0: bd, 1: sd}, {0: sd}, {0: sd})
    m = fm.V2SDPAAttention(*sizes).eval()
    export_module(m, (x, cos, sin), out_dir, "sdpa_v2_dynamic", ("linalg",),
                  dynamic_shapes=dyn, decomposition_table=table_without_linear(),
                  provenance=": V2SDPAAttention(), dynamic B and S, aten.linear not decomposed")
    kw = dict(gqa="repeat_interleave", mask="none")
    m = fm.V2SDPAAttention(*sizes, **kw).to(torch.bfloat16).eval()
    export_module(m, (x.bfloat16(), cos.bfloat16(), sin.bfloat16()), out_dir,
                  "sdpa_v2_dynamic_bf16", ("linalg",), dynamic_shapes=dyn,
                  decomposition_table=table_without_linear(),
                  provenance=f": V2SDPAAttention({kw}) in bf16, dynamic B and S, "
                  "aten.linear not decomposed")


FORMS = {
    "form_div_additive": dict(scores="div", mask="additive"),
    "form_mul_masked_fill_view": dict(scores="mul", mask="masked_fill", pairing="view"),
    "form_q_first_where_explicit_sigmoid": dict(scores="q_first", mask="where",
                                                sigmoid="explicit"),
    "form_bmm_where_inv": dict(scores="bmm", mask="where_inv"),
    "form_hf_finfo_view": dict(scores="hf", mask="finfo", pairing="view"),
    "form_gpt2": dict(scores="div", mask="gpt2"),
    "form_dropout_eval": dict(dropout=True, mask="none"),
    "form_packed_qkv": dict(packed=True),
    "form_halves_repeat": dict(pairing="halves", gqa="repeat"),
    # near misses
    "miss_halves_kv_not_shared": dict(pairing="halves"),
    "miss_scale_after_softmax": dict(post_scale=True),
}


def export_forms(out_dir):
    """Point 2 of issue 13: Inductor's _sfdp_pattern_* forms, each with a V2
    epilogue."""
    torch.manual_seed(2)
    b, s, h, hkv, d = 2, 8, 4, 2, 4
    q, k, v = torch.randn(b, s, 2 * h, d), torch.randn(b, s, hkv, d), torch.randn(b, s, hkv, d)
    lam = torch.randn(b, s, h)
    for name, kw in FORMS.items():
        m = fm.V2Form(h, hkv, d, **kw).eval()
        args = (torch.cat([v, q, k], dim=2), lam) if kw.get("packed") else (q, k, v, lam)
        export_module(m, args, out_dir, name, ("linalg",), provenance=f": V2Form({kw})")
    m = fm.V2Form(h, hkv, d, scores="mul", mask="masked_fill", softmax_f32=True).eval()
    export_module(m, tuple(t.bfloat16() for t in (q, k, v, lam)), out_dir,
                  "form_bf16_softmax_f32", ("linalg",),
                  provenance=": V2Form(softmax_f32=True) in bf16")


def export_example(examples_dir):
    """Point 6 of issue 13: README's main job on a full V2 attention module
    in the reference's style (SDPA, GQA, RoPE, projections). CPU: f32 at
    realistic sizes with its weights; GPU: a real model's sizes (d_model
    2048, 32 query heads, 8 KV heads, head dim 128, bf16), with the
    weights as arguments so the file stays small."""
    torch.manual_seed(3)
    b, s, d_model, h, hkv, d = 2, 64, 128, 4, 2, 16
    cos, sin = fm.rope_tables(s, d)
    m = fm.V2SDPAAttention(d_model, h, hkv, d).eval()
    export_module(m, (torch.randn(b, s, d_model), cos, sin), examples_dir, "v2_attention",
                  ("linalg",), keep_resources=True,
                  provenance=": V2SDPAAttention(d_model=128, heads=4 pairs, kv=2, d=16), "
                             "B=2, S=64")
    m = fm.V2SDPAAttentionFunctional(2048, 16, 8, 128).to(torch.bfloat16).eval()
    s = 256
    cos, sin = fm.rope_tables(s, 128)
    args = (torch.randn(1, s, 2048).bfloat16(), cos.bfloat16(), sin.bfloat16()) + tuple(
        w.detach() for w in m.weights())
    export_module(m, args, examples_dir, "v2_attention_bf16", ("linalg",),
                  provenance=": V2SDPAAttentionFunctional(2048, 16 pairs, kv=8, d=128) in bf16")
    for name in ("v2_attention", "v2_attention_bf16"):
        os.replace(os.path.join(examples_dir, f"{name}.linalg.mlir"),
                   os.path.join(examples_dir, f"{name}.mlir"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", default="legacy,sdpa,forms,example",
                    help="comma-separated: legacy, sdpa, forms, example")
    ap.add_argument("out_dir", nargs="?", default=os.path.join(
        os.path.dirname(__file__), "..", "test", "Dialect", "DiffAttn", "Transforms",
        "Inputs", "fuse"))
    opts = ap.parse_args()
    out_dir = opts.out_dir
    groups = opts.groups.split(",")
    examples_dir = os.path.join(os.path.dirname(__file__), "..", "examples")
    os.makedirs(out_dir, exist_ok=True)
    if "sdpa" in groups:
        export_sdpa(out_dir)
    if "forms" in groups:
        export_forms(out_dir)
    if "example" in groups:
        export_example(examples_dir)
    if "legacy" not in groups:
        return
    torch.manual_seed(0)
    v2 = DiffAttnV2Block(True, d_model=32, num_heads=4, num_kv_heads=2, head_dim=8).eval()
    export(v2, "v2_block", out_dir, 8)
    base = DiffAttnV2Block(False, d_model=32, num_heads=4, num_kv_heads=2, head_dim=8).eval()
    export(base, "baseline_attention", out_dir, 8)
    v1 = DiffAttnV1Block(embed_dim=64, depth=3, num_heads=4, num_kv_heads=2).eval()
    with torch.no_grad():
        v1.subln.weight.copy_(1.0 + 0.1 * torch.randn(v1.subln.weight.shape))
    export(v1, "v1_block", out_dir, 8)
    export_cores(out_dir)
    export_decoder_layer(os.path.join(os.path.dirname(__file__), "..", "examples",
                                      "decoder_layer.mlir"))


if __name__ == "__main__":
    main()
