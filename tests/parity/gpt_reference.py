"""GPT-2 and Llama in plain PyTorch, the references the parity tests hold shardtrain to.

Written from the definitions (REFERENCE.md): pre-LN blocks, tanh GELU, LayerNorm eps 1e-5,
causal attention with scale 1/sqrt(head_dim), LM head tied to wte, Hugging Face names and
[in, out] weight layout. Also: the token-shard format, the data contract and the learning-rate
schedule, each re-implemented here from the README rather than imported from shardtrain.
"""
import json
import math
import struct

import numpy as np
import torch
import torch.nn.functional as F

SHARD_MAGIC = b"STTOKENS"


def write_shard(path, tokens, vocab_size):
    width = 2 if vocab_size <= 65536 else 4
    header = SHARD_MAGIC + struct.pack("<IIQQ", 1, width, vocab_size, len(tokens))
    header += b"\0" * (64 - len(header))
    with open(path, "wb") as f:
        f.write(header)
        f.write(np.asarray(tokens, dtype=np.uint16 if width == 2 else np.uint32).tobytes())


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    kinds = {"F32": np.float32}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        arr = np.frombuffer(data[begin:end], dtype=kinds[info["dtype"]]).reshape(info["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out


class Gpt(torch.nn.Module):
    def __init__(self, weights, n_layer, n_head, sdpa=False):
        """sdpa: attention through F.scaled_dot_product_attention (torch >= 2.0; on a GPU the
        FlashAttention kernels), for speed comparisons; the default spells it out."""
        super().__init__()
        self.n_layer, self.n_head, self.sdpa = n_layer, n_head, sdpa
        self.p = torch.nn.ParameterDict(
            {k.replace(".", "__"): torch.nn.Parameter(v.clone()) for k, v in weights.items()})

    def w(self, name):
        return self.p[name.replace(".", "__")]

    def forward(self, idx):
        B, T = idx.shape
        C = self.w("wte.weight").shape[1]
        H, D = self.n_head, C // self.n_head
        x = self.w("wte.weight")[idx] + self.w("wpe.weight")[:T]
        mask = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
        for i in range(self.n_layer):
            h = lambda n: self.w(f"h.{i}.{n}")
            a = F.layer_norm(x, (C,), h("ln_1.weight"), h("ln_1.bias"), 1e-5)
            qkv = a @ h("attn.c_attn.weight") + h("attn.c_attn.bias")
            q, k, v = qkv.split(C, dim=2)
            q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))
            if self.sdpa:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                att = (q @ k.transpose(-2, -1)) / math.sqrt(D)
                att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
                y = att @ v
            y = y.transpose(1, 2).reshape(B, T, C)
            x = x + y @ h("attn.c_proj.weight") + h("attn.c_proj.bias")
            m = F.layer_norm(x, (C,), h("ln_2.weight"), h("ln_2.bias"), 1e-5)
            m = F.gelu(m @ h("mlp.c_fc.weight") + h("mlp.c_fc.bias"), approximate="tanh")
            x = x + m @ h("mlp.c_proj.weight") + h("mlp.c_proj.bias")
        x = F.layer_norm(x, (C,), self.w("ln_f.weight"), self.w("ln_f.bias"), 1e-5)
        return x @ self.w("wte.weight").T


class Llama(Gpt):
    """Llama as Hugging Face's LlamaForCausalLM defines it, spelled out: RMSNorm (fp32 mean of
    squares, eps), rotary embeddings with rotate_half (dimension i pairs with i + D/2,
    inv_freq = theta^(-2i/D), angles p * inv_freq in fp32), grouped-query attention (each K/V
    head repeated for its n_head / n_kv_head query heads), SwiGLU MLP down(silu(gate) * up), no
    biases, nn.Linear (out, in) weights, lm_head untied unless absent."""

    def __init__(self, weights, n_layer, n_head, n_kv_head, theta=10000.0, eps=1e-5,
                 scaling=None):
        """scaling: Llama 3.1's (factor, low_freq_factor, high_freq_factor, original max
        position), as transformers' _compute_llama3_parameters applies it to inv_freq."""
        super().__init__(weights, n_layer, n_head)
        self.n_kv_head, self.theta, self.eps, self.scaling = n_kv_head, theta, eps, scaling

    def rms(self, x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * weight

    def forward(self, idx):
        B, T = idx.shape
        emb = self.w("model.embed_tokens.weight")
        C = emb.shape[1]
        H, K, D = self.n_head, self.n_kv_head, C // self.n_head
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
        if self.scaling:
            factor, low, high, original = self.scaling
            wavelen = 2 * math.pi / inv_freq
            scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
            smooth = (original / wavelen - low) / (high - low)
            blended = (1 - smooth) * scaled / factor + smooth * scaled
            medium = (wavelen >= original / high) & (wavelen <= original / low)
            inv_freq = torch.where(medium, blended, scaled)
        angle = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq[None, :]  # (T, D/2)
        cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)

        def rope(v):  # (B, heads, T, D)
            v1, v2 = v[..., : D // 2], v[..., D // 2:]
            return v * cos + torch.cat([-v2, v1], -1) * sin

        mask = torch.ones(T, T, dtype=torch.bool).tril()
        x = emb[idx]
        for i in range(self.n_layer):
            h = lambda n: self.w(f"model.layers.{i}.{n}")
            a = self.rms(x, h("input_layernorm.weight"))
            q = (a @ h("self_attn.q_proj.weight").T).view(B, T, H, D).transpose(1, 2)
            k = (a @ h("self_attn.k_proj.weight").T).view(B, T, K, D).transpose(1, 2)
            v = (a @ h("self_attn.v_proj.weight").T).view(B, T, K, D).transpose(1, 2)
            q, k = rope(q), rope(k)
            k, v = k.repeat_interleave(H // K, dim=1), v.repeat_interleave(H // K, dim=1)
            att = (q @ k.transpose(-2, -1)) / math.sqrt(D)
            y = att.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ v
            x = x + y.transpose(1, 2).reshape(B, T, C) @ h("self_attn.o_proj.weight").T
            m = self.rms(x, h("post_attention_layernorm.weight"))
            m = F.silu(m @ h("mlp.gate_proj.weight").T) * (m @ h("mlp.up_proj.weight").T)
            x = x + m @ h("mlp.down_proj.weight").T
        x = self.rms(x, self.w("model.norm.weight"))
        head = "lm_head.weight" if "lm_head__weight" in self.p else "model.embed_tokens.weight"
        return x @ self.w(head).T


def windows(tokens, T, first, count):
    """The data contract: window i is tokens [i*T, i*T+T], indices wrapping past the end."""
    n = (len(tokens) - 1) // T
    rows = [tokens[(i % n) * T:(i % n) * T + T + 1] for i in range(first, first + count)]
    w = torch.tensor(np.array(rows, dtype=np.int64))
    return w[:, :-1], w[:, 1:]


def learning_rate(step, lr, min_lr, warmup, total, cosine):
    if warmup > 0 and step <= warmup:
        return lr * step / warmup
    if not cosine:
        return lr
    progress = (step - warmup) / (total - warmup) if total > warmup else 1.0
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)
