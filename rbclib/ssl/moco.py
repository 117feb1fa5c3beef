"""The SSL network of :mod:`rbclib.ssl.pretrain` (paper section 3, eqs. 10-12, Figure 3).

MoCo v2 (He et al. 2020; Chen et al. 2020) on the ResUnet: the query encoder and decoder, the
momentum encoder (:func:`momentum_update`), the MLP projection heads, the reconstruction head
and the queue of negatives (:class:`FeatureQueue`), all in :class:`MoCoResUnet`;
:func:`info_nce` is eq. 10.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from rbclib.core.distributed import gather_from_ranks

if TYPE_CHECKING:
    from rbclib.ssl.pretrain import SSLConfig


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 10 averaged over the batch; sim is the dot product.

    Parameters
    ----------
    q, k : torch.Tensor
        (B, D) L2-normalised queries and their positive keys.
    queue : torch.Tensor
        (K, D) negatives.
    temperature : float
        tau of eq. 10.

    Returns
    -------
    loss : torch.Tensor
        The scalar InfoNCE loss.
    logits : torch.Tensor
        (B, 1 + K); the positive is column 0.
    """
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ queue.t()
    logits = torch.cat([pos, neg], dim=1) / temperature
    labels = torch.zeros(len(q), dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels), logits


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """theta_target <- m * theta_target + (1 - m) * theta_online; buffers (BN statistics) copied.

    Parameters
    ----------
    online : torch.nn.Module
        The network the optimiser trains.
    target : torch.nn.Module
        Its momentum copy, updated in place.
    momentum : float
        m.
    """
    for p_o, p_t in zip(online.parameters(), target.parameters()):
        p_t.mul_(momentum).add_(p_o.detach(), alpha=1.0 - momentum)
    for b_o, b_t in zip(online.buffers(), target.buffers()):
        b_t.copy_(b_o)


class FeatureQueue(nn.Module):
    """Ring buffer of the last ``size`` keys (size, dim), first-in first-out.

    Starts with random unit vectors (as MoCo does); ``enqueue`` overwrites the oldest.

    Parameters
    ----------
    size : int
        Keys held (K).
    dim : int
        Key size.
    generator : torch.Generator, optional
        Random source of the initial vectors.
    """

    def __init__(self, size: int, dim: int, *, generator: torch.Generator | None = None):
        super().__init__()
        self.register_buffer("features", F.normalize(torch.randn(size, dim, generator=generator), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Overwrite the oldest keys with ``keys``.

        Parameters
        ----------
        keys : torch.Tensor
            (B, dim) new keys; only the last ``size`` are kept when B > size.
        """
        size = len(self.features)
        keys = keys.detach()[-size:]
        idx = (int(self.ptr) + torch.arange(len(keys), device=keys.device)) % size
        self.features[idx] = keys
        self.ptr.fill_((int(self.ptr) + len(keys)) % size)


def _projection_head(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


class MoCoResUnet(nn.Module):
    """The SSL network of Figure 3: ResUnet encoder/decoder (query), momentum encoder,
    MLP projection heads, reconstruction head (1x1 conv to ``in_channels``) and the queue.

    Parameters
    ----------
    config : SSLConfig
        Encoder, decoder, projection head, queue, momentum, temperature and loss weight.
    generator : torch.Generator, optional
        Random source of the queue's initial vectors.
    """

    def __init__(self, config: SSLConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        from rbclib.seg.models import build_resunet

        self.config = config
        net = build_resunet(config.encoder, in_channels=config.in_channels, classes=1,
                            decoder_channels=config.decoder_channels)
        self.encoder, self.decoder = net.encoder, net.decoder
        self.rec_head = nn.Conv2d(config.decoder_channels[-1], config.in_channels, kernel_size=1)
        feat_dim = self.encoder.out_channels[-1]
        self.proj = _projection_head(feat_dim, config.proj_hidden, config.proj_dim)
        self.encoder_k = copy.deepcopy(self.encoder)
        self.proj_k = copy.deepcopy(self.proj)
        for p in list(self.encoder_k.parameters()) + list(self.proj_k.parameters()):
            p.requires_grad_(False)
        self.queue = FeatureQueue(config.queue_size, config.proj_dim, generator=generator)
        self.world = 1  # DDP ranks: every rank's keys join the queue, so the queues stay identical

    def online_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates.

        Returns
        -------
        list of torch.nn.Parameter
            Those of the query encoder, the decoder and the heads.
        """
        return [p for m in (self.encoder, self.decoder, self.rec_head, self.proj) for p in m.parameters()]

    def _expand(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, self.config.in_channels, -1, -1)

    def forward(self, in_q: torch.Tensor, tgt_q: torch.Tensor, in_k: torch.Tensor, tgt_k: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses of one batch of view pairs.

        Updates the momentum encoder and the queue as side effects when training.

        Parameters
        ----------
        in_q, tgt_q : torch.Tensor
            (B, 1, H, W) input and target of the query view.
        in_k, tgt_k : torch.Tensor
            (B, 1, H, W) input and target of the key view.

        Returns
        -------
        dict of str to torch.Tensor
            ``loss`` (eq. 12), ``contrastive`` (eq. 10), ``rec`` (eq. 11) and ``accuracy``
            (share of positives ranked first).
        """
        cfg = self.config
        feats_q = self.encoder(self._expand(in_q))
        q = F.normalize(self.proj(feats_q[-1].mean(dim=(2, 3))), dim=1)
        with torch.no_grad():
            if self.training:
                momentum_update(self.encoder, self.encoder_k, cfg.momentum)
                momentum_update(self.proj, self.proj_k, cfg.momentum)
            feats_k = self.encoder_k(self._expand(in_k))
            k = F.normalize(self.proj_k(feats_k[-1].mean(dim=(2, 3))), dim=1)
        contrastive, logits = info_nce(q, k, self.queue.features.clone(), cfg.temperature)
        rec_q = self.rec_head(self.decoder(feats_q))
        rec_k = self.rec_head(self.decoder([f.detach() for f in feats_k]))
        rec = F.mse_loss(rec_q, self._expand(tgt_q)) + F.mse_loss(rec_k, self._expand(tgt_k))
        if self.training:
            self.queue.enqueue(gather_from_ranks(k, self.world))
        accuracy = (logits.argmax(dim=1) == 0).float().mean()
        return {"loss": contrastive + cfg.rec_weight * rec, "contrastive": contrastive.detach(),
                "rec": rec.detach(), "accuracy": accuracy}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output for inputs, first channel.

        Parameters
        ----------
        x : torch.Tensor
            (B, 1, H, W) inputs.

        Returns
        -------
        torch.Tensor
            (B, 1, H, W) reconstruction.
        """
        return self.rec_head(self.decoder(self.encoder(self._expand(x))))[:, :1]
