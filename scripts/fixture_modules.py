"""PyTorch modules behind the SDPA and "algebraically equal forms" fixtures.

Used by scripts/export_fixtures.py (groups `sdpa`, `forms`, `example`); see
that script for how they are exported. Everything here is our own code,
written the way the public reference modules (microsoft/unilm,
Diff-Transformer/) and common PyTorch attention code write it.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def rope_interleaved(x, cos, sin):
    """Rotary embedding on adjacent pairs (x0, x1) of the last dim."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)


def rope_tables(seq, dim):
    inv = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    ang = torch.arange(seq).float()[:, None] * inv[None, :]
    return torch.cos(ang), torch.sin(ang)


def sdpa_kwargs(mask, q, scale, enable_gqa):
    """Keyword arguments of F.scaled_dot_product_attention for one mask
    style; masks are built inside the module from aranges."""
    kw = {}
    if scale is not None:
        kw["scale"] = scale
    if enable_gqa:
        kw["enable_gqa"] = True
    s = q.shape[2]
    pos = torch.arange(s, device=q.device)
    if mask == "causal":
        kw["is_causal"] = True
    elif mask == "bool":  # True = may attend
        kw["attn_mask"] = pos[None, :] <= pos[:, None]
    elif mask == "additive":
        kw["attn_mask"] = torch.zeros(s, s, dtype=q.dtype, device=q.device).masked_fill(
            pos[None, :] > pos[:, None], float("-inf"))
    return kw


class V2SDPAAttention(nn.Module):
    """Differential Transformer V2 attention in the reference's style
    (Diff-Transformer-V2/multihead_flashdiffv2.py: q/k/v/lambda projections,
    interleaved RoPE, flash_attn_func(q, k, v, causal=True), the sigmoid
    epilogue on heads 2h and 2h+1), with flash_attn_func replaced by
    F.scaled_dot_product_attention on BHSD transposes.

    gqa: "enable_gqa" (SDPA's own), "repeat_interleave" (K/V expanded first).
    mask: "causal" (is_causal), "none", "bool" / "additive" (attn_mask).
    pairing: "slices" (0::2 / 1::2) or "view" (view(..., H, 2, D)).
    """

    def __init__(self, d_model, num_heads, num_kv_heads, head_dim, gqa="enable_gqa",
                 mask="causal", scale=None, dropout=0.0, pairing="slices"):
        super().__init__()
        self.h, self.hkv, self.d = num_heads, num_kv_heads, head_dim
        self.gqa, self.mask, self.scale, self.dropout = gqa, mask, scale, dropout
        self.pairing = pairing
        self.q_proj = nn.Linear(d_model, 2 * num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, num_kv_heads * head_dim, bias=False)
        self.lambda_proj = nn.Linear(d_model, num_heads, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, d_model, bias=False)

    def forward(self, x, cos, sin):
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, 2 * self.h, self.d)
        k = self.k_proj(x).view(b, n, self.hkv, self.d)
        v = self.v_proj(x).view(b, n, self.hkv, self.d)
        q, k = rope_interleaved(q, cos, sin), rope_interleaved(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        rep = 2 * self.h // self.hkv
        if self.gqa == "repeat_interleave":
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        kw = sdpa_kwargs(self.mask, q, self.scale, self.gqa == "enable_gqa")
        a = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, **kw)
        a = a.transpose(1, 2)
        lam = torch.sigmoid(self.lambda_proj(x)).unsqueeze(-1)
        if self.pairing == "view":
            a = a.view(b, n, self.h, 2, self.d)
            out = a[:, :, :, 0] - lam * a[:, :, :, 1]
        else:
            out = a[:, :, 0::2] - lam * a[:, :, 1::2]
        return self.o_proj(out.reshape(b, n, self.h * self.d))


class V2SDPAAttentionFunctional(V2SDPAAttention):
    """V2SDPAAttention with its projection weights passed as arguments
    (forward(x, cos, sin, wq, wk, wv, wlam, wo)), so that an export at a real
    model's sizes does not carry the weights as constants."""

    def weights(self):
        return (self.q_proj.weight, self.k_proj.weight, self.v_proj.weight,
                self.lambda_proj.weight, self.o_proj.weight)

    def forward(self, x, cos, sin, wq, wk, wv, wl, wo):
        b, n, _ = x.shape
        q = F.linear(x, wq).view(b, n, 2 * self.h, self.d)
        k = F.linear(x, wk).view(b, n, self.hkv, self.d)
        v = F.linear(x, wv).view(b, n, self.hkv, self.d)
        q, k = rope_interleaved(q, cos, sin), rope_interleaved(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        a = a.transpose(1, 2)
        lam = torch.sigmoid(F.linear(x, wl)).unsqueeze(-1)
        out = a[:, :, 0::2] - lam * a[:, :, 1::2]
        return F.linear(out.reshape(b, n, self.h * self.d), wo)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class V1SDPAAttention(nn.Module):
    """Differential Transformer V1 (multihead_flashdiff_1.py) with its four
    flash_attn_func calls replaced by two SDPA calls over the shared value
    heads of width 2D (SDPA allows Dv != D)."""

    def __init__(self, embed_dim, depth, num_heads, num_kv_heads):
        super().__init__()
        self.h, self.hkv = num_heads, num_kv_heads
        self.rep = num_heads // num_kv_heads
        self.d = embed_dim // num_heads // 2
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.k_proj = nn.Linear(embed_dim, embed_dim // self.rep, bias=False)
        self.v_proj = nn.Linear(embed_dim, embed_dim // self.rep, bias=False)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * depth)
        self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2 = (
            nn.Parameter(torch.randn(self.d) * 0.1) for _ in range(4))
        self.subln = RMSNorm(2 * self.d, eps=1e-5)

    def forward(self, x, cos, sin):
        b, n, _ = x.shape
        h, hkv, d = self.h, self.hkv, self.d
        q = rope_interleaved(self.q_proj(x).view(b, n, 2 * h, d), cos, sin)
        k = rope_interleaved(self.k_proj(x).view(b, n, 2 * hkv, d), cos, sin)
        v = self.v_proj(x).view(b, n, hkv, 2 * d).transpose(1, 2)
        q = q.view(b, n, h, 2, d)
        k = k.view(b, n, hkv, 2, d)
        a1 = F.scaled_dot_product_attention(
            q[:, :, :, 0].transpose(1, 2), k[:, :, :, 0].transpose(1, 2), v,
            is_causal=True, enable_gqa=True)
        a2 = F.scaled_dot_product_attention(
            q[:, :, :, 1].transpose(1, 2), k[:, :, :, 1].transpose(1, 2), v,
            is_causal=True, enable_gqa=True)
        lambda_1 = torch.exp(torch.sum(self.lambda_q1 * self.lambda_k1, dim=-1))
        lambda_2 = torch.exp(torch.sum(self.lambda_q2 * self.lambda_k2, dim=-1))
        lam = lambda_1 - lambda_2 + self.lambda_init
        attn = (a1 - lam * a2).transpose(1, 2)
        attn = self.subln(attn) * (1 - self.lambda_init)
        return self.out_proj(attn.reshape(b, n, h * 2 * d))


class V2SDPACore(nn.Module):
    """The V2 attention core alone through SDPA: (q, k, v, lam) -> out, for
    near misses that need runtime inputs (a padding mask)."""

    def __init__(self, padding_mask=False, standard=False):
        super().__init__()
        self.padding_mask, self.standard = padding_mask, standard

    def forward(self, q, k, v, lam, mask=None):
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.padding_mask:  # [B, Sk] bool: True = a real token
            a = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask[:, None, None, :],
                                               enable_gqa=True)
        else:
            a = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)
        a = a.transpose(1, 2)
        if self.standard:  # plain attention over 2H heads, no difference
            return a
        return a[:, :, 0::2] - torch.sigmoid(lam).unsqueeze(-1) * a[:, :, 1::2]


class V2Form(nn.Module):
    """The V2 core in the forms PyTorch Inductor's fuse_attention pass
    recognises (its _sfdp_pattern_* family), each followed by a V2
    epilogue. Options (see FORMS in export_fixtures.py):

    scores: "div" q@kT / sqrt(d), "mul" q@kT * s, "q_first" (q * s)@kT,
            "bmm" torch.bmm on [B*H, S, D] views, "hf" HF permute layout
            (k permuted to [B, H, D, S]).
    mask:   "none", "additive" (+ -inf tensor), "masked_fill", "where"
            (where(keep, s, -inf)), "where_inv" (where(~keep, -inf, s)),
            "finfo" (masked_fill with finfo.min), "gpt2" (where(keep, s,
            finfo.min) + an all-zero additive mask).
    softmax_f32: softmax of scores.float(), cast back (bf16 inputs).
    dropout: an nn.Dropout (exported in eval mode: the identity).
    packed: q, k, v sliced from one [B, S, 2H + 2Hkv, D] projection.
    pairing: "slices", "view" or "halves" (pairs (h, h + H));
    sigmoid: "torch" or "explicit" (1 / (1 + exp(-x))).
    gqa: "repeat_interleave" (head j reads KV head j // G) or "repeat"
         (j % Hkv).
    post_scale: the probabilities scaled by 2 after the softmax (a miss).
    """

    def __init__(self, h, hkv, d, scores="mul", mask="additive", softmax_f32=False,
                 dropout=False, packed=False, pairing="slices", sigmoid="torch",
                 gqa="repeat_interleave", post_scale=False):
        super().__init__()
        self.gqa, self.post_scale = gqa, post_scale
        self.h, self.hkv, self.d = h, hkv, d
        self.scores, self.mask, self.softmax_f32 = scores, mask, softmax_f32
        self.packed, self.pairing, self.sigmoid = packed, pairing, sigmoid
        self.drop = nn.Dropout(0.1) if dropout else None

    def split(self, *args):
        if not self.packed:
            return args
        qkv, lam = args
        h2, hkv = 2 * self.h, self.hkv
        # Interleaved order: [v, q, k] so that no operand starts at offset 0.
        v = qkv[:, :, :hkv]
        q = qkv[:, :, hkv:hkv + h2]
        k = qkv[:, :, hkv + h2:]
        return q, k, v, lam

    def forward(self, *args):
        q, k, v, lam = self.split(*args)
        b, s, h2, d = q.shape
        rep = h2 // k.shape[2]
        scale = d ** -0.5
        if self.gqa == "repeat":
            k, v = k.repeat(1, 1, rep, 1), v.repeat(1, 1, rep, 1)
        else:
            k = k.repeat_interleave(rep, dim=2)
            v = v.repeat_interleave(rep, dim=2)
        qt, vt = q.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
        if self.scores == "hf":
            kt = k.permute(0, 2, 3, 1)  # [B, H, D, S]
            sc = torch.matmul(qt, kt) / math.sqrt(d)
        elif self.scores == "bmm":
            q3 = qt.reshape(b * h2, s, d)
            k3 = k.permute(0, 2, 1, 3).reshape(b * h2, s, d)
            sc = torch.bmm(q3, k3.transpose(1, 2)).view(b, h2, s, s) * scale
        elif self.scores == "div":
            sc = torch.matmul(qt, k.permute(0, 2, 1, 3).transpose(-2, -1)) / math.sqrt(d)
        elif self.scores == "q_first":
            sc = torch.matmul(qt * scale, k.permute(0, 2, 1, 3).transpose(-2, -1))
        else:
            sc = torch.matmul(qt, k.permute(0, 2, 1, 3).transpose(-2, -1)) * scale
        pos = torch.arange(s)
        keep = pos[None, :] <= pos[:, None]
        lowest = torch.finfo(sc.dtype).min
        if self.mask == "additive":
            sc = sc + torch.zeros(s, s, dtype=sc.dtype).masked_fill(~keep, float("-inf"))
        elif self.mask == "masked_fill":
            sc = sc.masked_fill(~keep, float("-inf"))
        elif self.mask == "where":
            sc = torch.where(keep, sc, torch.tensor(float("-inf"), dtype=sc.dtype))
        elif self.mask == "where_inv":
            sc = torch.where(~keep, torch.tensor(float("-inf"), dtype=sc.dtype), sc)
        elif self.mask == "finfo":
            sc = sc.masked_fill(~keep, lowest)
        elif self.mask == "gpt2":
            sc = torch.where(keep, sc, torch.tensor(lowest, dtype=sc.dtype))
            sc = sc + torch.zeros(1, 1, 1, s, dtype=sc.dtype)
        if self.softmax_f32:
            p = F.softmax(sc.float(), dim=-1).to(q.dtype)
        else:
            p = F.softmax(sc, dim=-1)
        if self.drop is not None:
            p = self.drop(p)
        if self.post_scale:
            p = p * 2.0
        a = torch.matmul(p, vt).permute(0, 2, 1, 3)
        if self.sigmoid == "explicit":
            g = 1.0 / (1.0 + torch.exp(-lam))
        else:
            g = torch.sigmoid(lam)
        g = g.unsqueeze(-1)
        if self.pairing == "view":
            a = a.reshape(b, s, h2 // 2, 2, d)
            return a[:, :, :, 0] - g * a[:, :, :, 1]
        if self.pairing == "halves":
            return a[:, :, :h2 // 2] - g * a[:, :, h2 // 2:]
        return a[:, :, 0::2] - g * a[:, :, 1::2]
