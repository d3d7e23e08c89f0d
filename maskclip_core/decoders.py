"""The two small decoders of MaskCLIP, built from open_clip's transformer blocks.

ImageDecoder (method.md step 4): linear to decoder width, a learned mask token at every masked position, fixed 2-D
sin-cos decoder position embeddings, `depth` blocks, norm, linear head; predictions only at masked positions.
MaskedTokenHead (`decoder_depth=0`): no decoder, the SimMIM/BEiT form: the encoder itself sees a learned mask token
in place of every masked patch embedding and a linear head reads its output at the masked positions.
TextDecoder (step 8): bidirectional blocks over the MLM pass's hidden states and a vocabulary head tied to the
token embedding.
"""
from __future__ import annotations

import torch
from open_clip.pos_embed import get_2d_sincos_pos_embed
from open_clip.transformer import LayerNorm, Transformer
from torch import nn

from .attention import key_padding_mask


def decoder_dims(encoder_width: int, decoder_width: int = 0, decoder_heads: int = 0) -> tuple[int, int]:
    """(width, heads) of the image decoder: 0 means half the encoder's width (at least 32; MAE's "small decoder")
    and width // 32 heads (at least 1)."""
    width = decoder_width or max(encoder_width // 2, 32)
    return width, decoder_heads or max(1, width // 32)


class ImageDecoder(nn.Module):
    """Predicts a target vector for every masked patch from the visible tokens (incl. CLS)."""

    def __init__(self, grid_size: tuple[int, int], in_width: int, width: int, depth: int, heads: int, out_dim: int):
        super().__init__()
        self.embed = nn.Linear(in_width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.mask_token, std=0.02)
        assert grid_size[0] == grid_size[1], "square patch grids only"
        pos = get_2d_sincos_pos_embed(width, grid_size[0], cls_token=True)  # [1 + N, width]
        self.register_buffer("pos_embed", torch.from_numpy(pos).float().unsqueeze(0), persistent=False)
        if depth < 1:
            raise ValueError("ImageDecoder needs depth >= 1; depth 0 is MaskedTokenHead")
        self.blocks = Transformer(width, depth, heads)
        self.norm = LayerNorm(width)
        self.head = nn.Linear(width, out_dim)

    def forward(self, cls_and_visible: torch.Tensor, ids_keep: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """cls_and_visible: [B, 1 + n_keep, in_width]; returns predictions [B, n_mask, out_dim] for the masked
        positions in raster order (the order of `tokens[mask]`)."""
        x = self.embed(cls_and_visible)
        b, n = mask.shape
        cls, vis = x[:, :1], x[:, 1:]
        full = self.mask_token.to(x.dtype).expand(b, n, -1)
        full = torch.scatter(full, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]), vis)
        x = torch.cat([cls, full], dim=1) + self.pos_embed.to(x.dtype)
        x = self.blocks(x)
        x = x[:, 1:][mask].view(b, -1, x.shape[-1])  # only masked positions are scored
        return self.head(self.norm(x))


class MaskedTokenHead(nn.Module):
    """`decoder_depth=0`: the mask token the ENCODER sees at masked patches, and a linear head on its output.

    The encoder pass runs on the full sequence (a full-cost pass, unlike the visible-only pass of a decoder), so
    every masked position's prediction depends on the image through self-attention.
    """

    def __init__(self, in_width: int, out_dim: int):
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(in_width))
        nn.init.normal_(self.mask_token, std=0.02)
        self.head = nn.Linear(in_width, out_dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens: [B, N, W] encoder output of the mask-token pass; returns [B, n_mask, out_dim] in raster order."""
        b = tokens.shape[0]
        return self.head(tokens[mask].view(b, -1, tokens.shape[-1]))


class TextDecoder(nn.Module):
    """Bidirectional blocks + norm + vocabulary head tied to the CLIP token embedding."""

    def __init__(self, width: int, depth: int, heads: int, vocab_size: int):
        super().__init__()
        self.heads = heads
        self.blocks = Transformer(width, depth, heads) if depth > 0 else None
        self.norm = LayerNorm(width)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor, mlm_mask: torch.Tensor, token_embedding: torch.Tensor,
                padding: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [n_masked, vocab] at the masked positions. Bidirectional; `padding` [B, L] (True at padding) keeps
        every token from attending to padding."""
        x = hidden
        if self.blocks is not None:
            attn_mask = None
            if padding is not None and bool(padding.any()):
                attn_mask = key_padding_mask(padding, self.heads, hidden.dtype)
            x = self.blocks(x, attn_mask=attn_mask)
        x = self.norm(x[mlm_mask])
        return nn.functional.linear(x, token_embedding.to(x.dtype), self.bias.to(x.dtype))


class PrototypeHead(nn.Module):
    """`soft` target head: projection to K prototypes (DINO/iBOT style, shared by student and EMA teacher)."""

    def __init__(self, width: int, num_prototypes: int, hidden: int = 0):
        super().__init__()
        hidden = hidden or width
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(width, num_prototypes, bias=False))
        # DINO's last layer: the weight-norm gain g is fixed at 1 and never trained (nor decayed), so the logits are
        # cosines of unit prototypes with a normalised input and the temperature alone sets their scale.
        gain = self.last.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.normalize(self.mlp(x), dim=-1)
        return self.last(x)
