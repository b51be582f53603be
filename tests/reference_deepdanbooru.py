"""An independent DeepDanbooru v3 forward pass, for parity tests only.

Written from the published layout of AUTOMATIC1111's port (stage rows with first/last conv
index, stride and where the projection sits; the paddings table), as a flat list of steps run by
a small interpreter over ``F.conv2d`` in float64. It shares no code with
``tagloop.tagger.deepdanbooru``, so a wrong index or padding in one is unlikely to be repeated in
the other.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

# (first conv index, last conv index, stride of the first block, projection numbered first?)
STAGE_ROWS = [
    (1, 10, 1, True),
    (11, 35, 2, True),
    (36, 96, 2, True),
    (97, 157, 2, False),  # stage 4: main branch 97-99, projection 100
    (158, 167, 2, True),
    (168, 177, 2, True),
]
BLOCKS_PER_STAGE = [3, 8, 20, 20, 3, 3]

SAME_3X3_S1 = (1, 1, 1, 1)
SAME_3X3_S2 = (0, 1, 0, 1)


def build_steps(swap_stage4: bool = False) -> list[tuple]:
    """The forward pass as steps: ('pad', pads, value), ('conv', i, stride), ('relu',), ('maxpool',),
    ('save',), ('add_shortcut', projection index or None, stride).

    ``swap_stage4`` wires stage 4 as if it were numbered like the others (projection 97, main
    98-100): a deliberately wrong reading, to show the quirk changes the result.
    """
    steps: list[tuple] = [
        ("pad", (2, 3, 2, 3), 0.0),
        ("conv", 0, 2),
        ("relu",),
        ("pad", (0, 1, 0, 1), float("-inf")),
        ("maxpool",),
    ]
    for stage, (first, last, stride, projection_first) in enumerate(STAGE_ROWS):
        if stage == 3 and swap_stage4:
            projection, main = first, [first + 3, first + 1, first + 2]
        elif projection_first:
            projection, main = first, [first + 1, first + 2, first + 3]
        else:
            projection, main = first + 3, [first, first + 1, first + 2]
        blocks = [(main, projection, stride)]
        i = first + 4
        while i <= last:
            blocks.append(([i, i + 1, i + 2], None, 1))
            i += 3
        assert i == last + 1 and len(blocks) == BLOCKS_PER_STAGE[stage], (stage, i, len(blocks))
        for (reduce, conv3, expand), proj, s in blocks:
            steps += [
                ("save",),
                ("conv", reduce, 1),
                ("relu",),
                ("pad", SAME_3X3_S1 if s == 1 else SAME_3X3_S2, 0.0),
                ("conv", conv3, s),
                ("relu",),
                ("conv", expand, 1),
                ("add_shortcut", proj, s),
                ("relu",),
            ]
    steps.append(("conv", 178, 1))
    return steps


def reference_forward(
    state_dict: Mapping[str, torch.Tensor], images_nhwc: torch.Tensor, swap_stage4: bool = False
) -> torch.Tensor:
    """NHWC float images in 0..1 -> (N, T) probabilities, computed in float64."""

    def weight(i: int) -> torch.Tensor:
        return state_dict[f"n_Conv_{i}.weight"].double()

    def bias(i: int) -> torch.Tensor | None:
        b = state_dict.get(f"n_Conv_{i}.bias")
        return None if b is None else b.double()

    x = images_nhwc.double().permute(0, 3, 1, 2)
    saved = x
    for step in build_steps(swap_stage4):
        kind = step[0]
        if kind == "pad":
            x = F.pad(x, step[1], value=step[2])
        elif kind == "conv":
            x = F.conv2d(x, weight(step[1]), bias(step[1]), stride=step[2])
        elif kind == "relu":
            x = torch.clamp(x, min=0)
        elif kind == "maxpool":
            x = F.max_pool2d(x, 3, 2)
        elif kind == "save":
            saved = x
        elif kind == "add_shortcut":
            proj, s = step[1], step[2]
            shortcut = saved if proj is None else F.conv2d(saved, weight(proj), bias(proj), stride=s)
            x = x + shortcut
        else:  # pragma: no cover
            raise ValueError(kind)
    pooled = x.sum(dim=(2, 3)) / (x.shape[2] * x.shape[3])
    return 1.0 / (1.0 + torch.exp(-pooled))
