"""The critic: fastai's gan_critic, a patch discriminator returning one logit per patch.

Every conv is spectral-normed with a bias, followed by LeakyReLU(0.2); no BatchNorm (it would
couple the real and generated images of a batch). At 128 px the default critic gives 5x5 patches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.networks.layers import ResBlock, conv, conv_layer

LEAKY = 0.2
FINAL_KERNEL = 4


class PatchCritic(nn.Module):
    """Arguments as ``build_critic``. Input: images in [0, 1]; output: logits (N, patches)."""

    def __init__(
        self, nf: int = 128, n_blocks: int = 3, p: float = 0.15, self_attention: bool = True
    ):
        super().__init__()
        self.arch = dict(nf=nf, n_blocks=n_blocks, p=p, self_attention=self_attention)
        self.n_blocks = n_blocks
        layers: list[nn.Module] = [
            conv_layer(3, nf, ks=4, stride=2, norm="spectral", leaky=LEAKY),
            nn.Dropout2d(p / 2),
            ResBlock(nf, norm="spectral", leaky=LEAKY, dense=True),
        ]
        nf *= 2
        for i in range(n_blocks):
            layers += [
                nn.Dropout2d(p),
                conv_layer(
                    nf,
                    nf * 2,
                    ks=4,
                    stride=2,
                    norm="spectral",
                    leaky=LEAKY,
                    self_attention=self_attention and i == 0,
                ),
            ]
            nf *= 2
        self.body = nn.Sequential(*layers)
        self.final = conv(nf, 1, ks=FINAL_KERNEL, padding=0, bias=False, norm="spectral")

    def min_size(self) -> int:
        """Smallest input side: the last feature map must be at least 2 px (see ``forward``)."""
        return 2 ** (self.n_blocks + 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if min(h, w) < self.min_size():
            raise ValueError(
                f"critic input {h}x{w} is smaller than {self.min_size()} px, the "
                f"minimum for n_blocks={self.n_blocks}"
            )
        # centred on 0 like the ImageNet-normalised images the recipe's critic saw
        y = self.body(x * 2 - 1)
        # A map smaller than the final kernel (inputs under ~52 px with 3 blocks) is zero-padded
        # up to it, as the other convs pad their borders, so small crops still give one patch.
        ph, pw = max(FINAL_KERNEL - y.shape[-2], 0), max(FINAL_KERNEL - y.shape[-1], 0)
        if ph or pw:
            y = F.pad(y, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return self.final(y).flatten(1)


def build_critic(
    nf: int = 128, n_blocks: int = 3, p: float = 0.15, self_attention: bool = True
) -> PatchCritic:
    """The patch critic.

    nf: channels of the first conv (doubled by the dense block and by every down block).
    n_blocks: stride-2 down blocks after the first conv; the patch grid is ~S / 2**(n_blocks+1) - 3.
    p: dropout before each down block (p/2 after the first conv).
    self_attention: SAGAN attention after the first down block.
    """
    return PatchCritic(nf, n_blocks, p, self_attention)
