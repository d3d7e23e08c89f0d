"""MaskCLIP (and the CLIP baseline) as one module around an unmodified open_clip `CLIP`.

`model.clip` stays a plain open_clip CLIP (same keys, same 49408-token vocabulary), so its state dict loads in
open_clip as it is. Everything MaskCLIP adds (image decoder, prototype head, MLM mask embedding and text decoder)
lives beside it. The EMA teacher is NOT part of this module (see ema.py): the trainer computes its targets and passes
them in, so the optimizer and DDP only ever see the student.
"""
from __future__ import annotations

import torch
from open_clip import ClipLoss
from torch import nn

from .config import MethodConfig
from .decoders import ImageDecoder, MaskedTokenHead, PrototypeHead, TextDecoder, decoder_dims
from .encoders import (check_vit, encode_image_tokens, encode_text_features, encode_text_hidden, padding_positions,
                       text_tower)
from .losses import contrastive_loss, feature_distill_loss, mlm_loss, pixel_targets, soft_distill_loss


class MaskCLIP(nn.Module):
    """Student of MaskCLIP; with `cfg.name == "clip"` it is exactly the CLIP baseline."""

    def __init__(
        self,
        clip: nn.Module,
        cfg: MethodConfig,
        special_token_ids: tuple[int, ...] = (),
        pad_id: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__()
        self.clip = clip
        self.cfg = cfg
        self.special_token_ids = tuple(special_token_ids)
        self.pad_id = pad_id
        self.loss_fn = ClipLoss(
            local_loss=cfg.local_loss, gather_with_grad=cfg.gather_with_grad, cache_labels=True,
            rank=rank, world_size=world_size,
        )
        self.image_decoder = self.proto_head = self.text_decoder = self.mask_embedding = None
        if not self.is_maskclip:
            return
        visual = check_vit(clip.visual)
        width = visual.conv1.out_channels
        self.patch_size = visual.patch_size[0]
        dec_width, dec_heads = decoder_dims(width, cfg.decoder_width, cfg.decoder_heads)
        out_dim = self.patch_size * self.patch_size * 3 if cfg.distill_target == "pixel" else width
        if cfg.w_distill > 0:
            if cfg.decoder_depth == 0:  # no decoder: the encoder sees mask tokens (method.md step 4)
                self.image_decoder = MaskedTokenHead(width, out_dim)
            else:
                self.image_decoder = ImageDecoder(
                    visual.grid_size, width, dec_width, cfg.decoder_depth, dec_heads, out_dim
                )
            if cfg.distill_target == "soft":
                self.proto_head = PrototypeHead(width, cfg.soft_prototypes)
        if cfg.w_mlm > 0:
            tower = text_tower(clip)
            text_width = tower.token_embedding.weight.shape[1]
            text_heads = tower.transformer.resblocks[0].attn.num_heads
            self.vocab_size = tower.token_embedding.num_embeddings
            self.mask_embedding = nn.Parameter(torch.randn(text_width) * 0.02)
            self.text_decoder = TextDecoder(text_width, cfg.text_decoder_depth, text_heads, self.vocab_size)

    @property
    def is_maskclip(self) -> bool:
        return self.cfg.name == "maskclip"

    @property
    def needs_image_mask(self) -> bool:
        return self.is_maskclip and (self.image_decoder is not None or self.cfg.contrastive_view == "masked")

    @property
    def needs_teacher(self) -> bool:
        return self.image_decoder is not None and self.cfg.distill_target != "pixel"

    @property
    def loss_weights(self) -> dict[str, float]:
        """Weight of each named loss term in the total."""
        return {"loss_contrastive": 1.0, "loss_distill": self.cfg.w_distill, "loss_mlm": self.cfg.w_mlm}

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        ids_keep: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        mlm_mask: torch.Tensor | None = None,
        teacher_targets: torch.Tensor | None = None,
        mlm_length: int | None = None,
        mlm_denominator: float | None = None,
        feature_bank: "FeatureBank | None" = None,
        mlm_embed: torch.Tensor | None = None,
        mlm_random: torch.Tensor | None = None,
        distill: bool = True,
        mlm: bool = True,
    ) -> dict[str, torch.Tensor]:
        """One training step's loss terms (unweighted) as a dict; `loss_weights` says how to sum them.

        `mlm_mask` marks the scored MLM positions; with `mlm_replace=bert`, `mlm_embed` (the positions given the
        mask embedding) and `mlm_random` (random token ids, -1 elsewhere) say how each is replaced.

        `mlm_length` / `mlm_denominator` (see `mlm_loss`) make the MLM term of a shard of the step equal to its
        part of the whole step's; `feature_bank` (gradient accumulation) holds the other micro-batches' cached
        contrastive features, so the contrastive loss of every micro-batch is the whole step's loss.

        `distill` / `mlm` False (before distill_start / mlm_start): that term, and every pass only it needs, is
        left out, so the step costs what a clip step costs.
        """
        clip = self.clip
        losses: dict[str, torch.Tensor] = {}
        distill = distill and self.image_decoder is not None
        use_masked = self.needs_image_mask and (distill or self.cfg.contrastive_view == "masked")
        masked = self._masked_pass(image, ids_keep, image_mask) if use_masked else None

        image_features, text_features = self._contrastive_features(image, text, masked)
        logit_scale = clip.logit_scale
        if feature_bank is not None:
            image_features, text_features = feature_bank.splice(image_features, text_features)
            logit_scale = feature_bank.scale(logit_scale)
        losses["loss_contrastive"] = contrastive_loss(self.loss_fn, image_features, text_features, logit_scale)

        if distill:
            _, pooled, tokens = masked
            if isinstance(self.image_decoder, MaskedTokenHead):
                pred = self.image_decoder(tokens, image_mask)
            else:
                pred = self.image_decoder(torch.cat([pooled.unsqueeze(1), tokens], dim=1), ids_keep, image_mask)
            b, m = pred.shape[:2]
            if self.cfg.distill_target == "pixel":
                target = pixel_targets(image, self.patch_size)[image_mask].view(b, m, -1)
                losses["loss_distill"] = feature_distill_loss(pred, target, "mse")
            elif self.cfg.distill_target == "soft":
                target = teacher_targets[image_mask].view(b, m, -1)
                losses["loss_distill"] = soft_distill_loss(
                    self.proto_head(pred), target, self.cfg.soft_student_temp
                )
            else:
                target = teacher_targets[image_mask].view(b, m, -1)
                losses["loss_distill"] = feature_distill_loss(pred, target, self.cfg.distill_loss)

        if self.text_decoder is not None and mlm:
            # Trailing padding carries nothing: cut the batch to its longest caption before the MLM pass (the
            # trainer passes the longest of the whole step, so that every shard cuts at the same length).
            length = mlm_length or caption_length(text, self.pad_id)
            text_c, mask_c = text[:, :length], mlm_mask[:, :length]
            embed_c = mask_c if mlm_embed is None else mlm_embed[:, :length]
            random_c = None if mlm_random is None else mlm_random[:, :length]
            if self.cfg.mlm_fraction < 1.0:
                rows = mlm_rows(mask_c)
                text_c, mask_c, embed_c = text_c[rows], mask_c[rows], embed_c[rows]
                random_c = None if random_c is None else random_c[rows]
            text_in = text_c
            if random_c is not None:
                text_in = torch.where(random_c >= 0, random_c, text_c)
            padding = padding_positions(text_c)
            hidden = encode_text_hidden(clip, text_in, embed_c, self.mask_embedding, causal=self.cfg.mlm_causal,
                                        padding=padding)
            logits = self.text_decoder(hidden, mask_c, text_tower(clip).token_embedding.weight, padding=padding)
            losses["loss_mlm"] = mlm_loss(logits, text_c[mask_c], mlm_denominator)
        return losses

    def _masked_pass(self, image: torch.Tensor, ids_keep: torch.Tensor | None,
                     image_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The student's pass over the masked image: visible tokens only (~(1 - ratio) of a full pass), or, with no
        decoder (`decoder_depth=0`), the full sequence with the mask token at masked patches (a full pass)."""
        if isinstance(self.image_decoder, MaskedTokenHead):
            return encode_image_tokens(self.clip.visual, image, mask=image_mask,
                                       mask_token=self.image_decoder.mask_token)
        return encode_image_tokens(self.clip.visual, image, ids_keep)

    def _contrastive_features(
        self, image: torch.Tensor, text: torch.Tensor, masked: tuple | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.contrastive_view == "masked" and masked is not None:
            image_features = masked[0]
        else:
            image_features = self.clip.encode_image(image)
        return image_features, encode_text_features(self.clip, text)

    @torch.no_grad()
    def contrastive_features(
        self, image: torch.Tensor, text: torch.Tensor, ids_keep: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (image, text) features the contrastive loss sees, without gradient (accumulation's first pass)."""
        masked = None
        if self.cfg.contrastive_view == "masked" and self.needs_image_mask:
            masked = self._masked_pass(image, ids_keep, image_mask)
        return self._contrastive_features(image, text, masked)

    def total_loss(self, losses: dict[str, torch.Tensor], accum_freq: int = 1) -> torch.Tensor:
        """Weighted sum of the named terms."""
        weights = self.loss_weights
        # Under accumulation each micro-batch's contrastive term is already the whole step's loss (its gradient
        # flows only into this micro-batch's features); the per-sample terms are means over the micro-batch.
        return sum(weights[k] * (v if k == "loss_contrastive" else v / accum_freq) for k, v in losses.items())


def mlm_rows(mlm_mask: torch.Tensor) -> torch.Tensor:
    """[B] bool, the captions of the MLM pass when it runs on a fraction of the batch (`mlm_fraction` < 1): those
    drawn for it, i.e. with a masked position. With none drawn, the first row alone, with nothing scored, keeps every
    MLM parameter in the graph (zero loss, DDP-safe)."""
    rows = mlm_mask.any(dim=1)
    return rows if bool(rows.any()) else torch.arange(len(rows), device=rows.device) == 0


def caption_length(text: torch.Tensor, pad_id: int) -> int:
    """Length of the longest caption of a token batch (trailing padding excluded)."""
    return int(((text != pad_id).long() * torch.arange(1, text.shape[1] + 1, device=text.device)).max())


class FeatureBank:
    """The contrastive features of every micro-batch of a step (cached without gradient), with micro-batch
    `index`'s slot to be replaced by the freshly computed features that carry gradient (open_clip's
    `accum_freq` scheme)."""

    def __init__(self, images: list[torch.Tensor], texts: list[torch.Tensor], index: int = 0) -> None:
        self.images, self.texts, self.index = images, texts, index

    def scale(self, logit_scale: torch.Tensor) -> torch.Tensor:
        """The logit scale, with gradient in the first micro-batch only. Every micro-batch's loss is the whole
        step's loss, so letting each pass a gradient to the shared scale would count it `accum_freq` times (as
        open_clip's accum_freq does); the features do not have this problem, each micro-batch owns its own."""
        return logit_scale if self.index == 0 else logit_scale.detach()

    def splice(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All micro-batches' features in order, this one's with gradient."""
        i = self.index
        return (torch.cat([*self.images[:i], image, *self.images[i + 1:]]),
                torch.cat([*self.texts[:i], text, *self.texts[i + 1:]]))
