"""Prompt editing and alternation at sampling time: the conditioning switched per step, as A1111 does.

A1111 turns each prompt (and each negative prompt) into a schedule (:mod:`tagloop.a1111.prompt_schedule`)
and, at every call of the denoiser, uses the first entry whose end step the call count (from 0)
has not passed (``reconstruct_cond_batch``). The schedule is made for A1111's step count of the pass:

* txt2img and img2img: ``steps`` (times 2 for its second-order samplers, Heun, DPM2, DPM2 a,
  DPM++ 2S a, DPM++ SDE, whose denoiser runs twice per step). img2img runs only the last steps of
  that schedule, counting the calls from 0 all the same: ``[a:b:0.5]`` at 20 steps and denoising
  0.5 (11 steps run) stays ``a``, as in A1111;
* the hires-fix pass: the first pass's count and the hires steps run (A1111's ``hires_steps``), so
  ``[a:b:1.5]`` switches half-way through the hires pass and a switch the first pass made stays.

diffusers calls ``callback_on_step_end`` after each loop step; the returned ``prompt_embeds`` (the
``[negative, positive]`` concatenation under classifier-free guidance) and, for SDXL,
``add_text_embeds`` (the pooled embeddings, same order) are what the next step uses. The first step's
embeddings are the pipeline arguments. A diffusers loop step is ``order`` denoiser calls of A1111's
count apart from the next one only for second-order samplers that diffusers runs one call per
step (DPM++ SDE, DPM++ 2S a); the call count is scaled for those.

Batches without any schedule never reach this module: their images are made exactly as before.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ..a1111.prompt_schedule import has_schedule, prompt_schedule
from .settings import SettingsError

#: A1111 samplers with ``second_order`` (their ``total_steps`` is twice the steps)
SECOND_ORDER_SAMPLERS = frozenset({"Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ SDE"})

Schedule = list[tuple[int, str]]


def steps_multiplier(s: Any) -> int:
    """A1111's ``total_steps(steps) // steps`` for the sampler of settings ``s``."""
    from ..a1111.samplers import resolve_sampler

    name, _ = resolve_sampler(s.sampler, s.schedule_type, version=s.version)
    return 2 if name in SECOND_ORDER_SAMPLERS else 1


def prompt_passes(s: Any) -> list[tuple[int, int | None]]:
    """``(steps, hires_steps)`` A1111 schedules prompts with, per sampling pass of settings ``s``."""
    m = steps_multiplier(s)
    first = s.steps * m
    if s.hires:
        return [(first, None), (first, (s.hires_steps or s.steps) * m)]
    return [(first, None)]


def scheduled_texts(text: str, passes: Sequence[tuple[int, int | None]]) -> list[str]:
    """The distinct texts ``text`` is encoded as over ``passes`` (``[text]`` without a schedule)."""
    if not has_schedule(text):
        return [text]
    out: dict[str, None] = {}
    for steps, hires_steps in passes:
        out.update((t, None) for _, t in prompt_schedule(text, steps, hires_steps))
    return list(out)


def refuse_sd3(pairs: Sequence[tuple[str, str]]) -> None:
    """SD3 reads plain text with its own encoders; a scheduled prompt is refused before any work."""
    for pos, neg in pairs:
        for name, text in (("prompt", pos), ("negative_prompt", neg)):
            if has_schedule(text):
                raise SettingsError(
                    f"`{name}` uses prompt editing or alternation ([from:to:when], [a|b]), which tagloop does not "
                    "support for SD3 yet; write it without them (brackets meant as text escaped: \\[ \\])."
                )


def _pick(schedule: Schedule, call: int) -> str:
    """A1111's ``reconstruct_cond_batch`` for one prompt: the first entry ``call`` has not passed
    (the first entry when it has passed them all)."""
    for end, text in schedule:
        if call <= end:
            return text
    return schedule[0][1]


class StepConditioning:
    """``callback_on_step_end`` that gives each step of one forward the conditioning A1111 uses.

    ``positives``/``negatives`` hold, per image, one schedule per pass; ``encode(text)`` returns the
    text's embeddings (SD1/SD2: a tensor; SDXL: ``(embeds, pooled)``), padded alike for the forward.
    ``multiplier`` is :func:`steps_multiplier`. :meth:`kwargs` are the pipeline arguments of a pass.
    """

    def __init__(
        self,
        positives: Sequence[Sequence[Schedule]],
        negatives: Sequence[Sequence[Schedule]],
        encode: Callable[[str], Any],
        *,
        sdxl: bool,
        multiplier: int,
        pass_index: int = 0,
        used: list | None = None,
    ) -> None:
        self.positives = positives
        self.negatives = negatives
        self.encode = encode
        self.sdxl = sdxl
        self.multiplier = multiplier
        self.pass_index = pass_index
        self._current: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        #: ``(pass, call, positives, negatives)`` of every loop step so far, all passes (for inspection)
        self.used: list[tuple[int, int, tuple[str, ...], tuple[str, ...]]] = [] if used is None else used

    def texts_at(self, call: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Per image, the positive and negative text of denoiser call ``call`` (from 0) of this pass."""
        k = self.pass_index
        return (
            tuple(_pick(p[k], call) for p in self.positives),
            tuple(_pick(n[k], call) for n in self.negatives),
        )

    def _embeds(self, texts: Sequence[str]) -> tuple[Any, Any]:
        import torch

        encoded = [self.encode(t) for t in texts]
        if self.sdxl:
            return torch.cat([e for e, _ in encoded]), torch.cat([q for _, q in encoded])
        return torch.cat(encoded), None

    def kwargs(self) -> dict:
        """The pipeline arguments of this pass: step 0's embeddings and this callback."""
        self._current = self.texts_at(0)
        self.used.append((self.pass_index, 0, *self._current))
        pos, pos_pooled = self._embeds(self._current[0])
        neg, neg_pooled = self._embeds(self._current[1])
        out: dict[str, Any] = dict(prompt_embeds=pos, negative_prompt_embeds=neg)
        inputs = ["prompt_embeds"]
        if self.sdxl:
            out.update(pooled_prompt_embeds=pos_pooled, negative_pooled_prompt_embeds=neg_pooled)
            inputs.append("add_text_embeds")
        out.update(callback_on_step_end=self, callback_on_step_end_tensor_inputs=inputs)
        return out

    def for_pass(self, pass_index: int) -> StepConditioning:
        """The same schedules for another pass (the hires fix)."""
        return StepConditioning(
            self.positives,
            self.negatives,
            self.encode,
            sdxl=self.sdxl,
            multiplier=self.multiplier,
            pass_index=pass_index,
            used=self.used,
        )

    def __call__(self, pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
        import torch

        order = max(1, int(getattr(pipe.scheduler, "order", 1)))
        call = (step + 1) * self.multiplier // order  # the denoiser call the next loop step makes
        texts = self.texts_at(call)
        if step + 1 < int(getattr(pipe, "_num_timesteps", None) or 1 << 30):  # a next step exists
            self.used.append((self.pass_index, call, *texts))
        if texts == self._current:
            return {}
        self._current = texts
        current = tensors["prompt_embeds"]
        with torch.no_grad():
            pos, pos_pooled = self._embeds(texts[0])
            neg, neg_pooled = self._embeds(texts[1])
        guided = bool(getattr(pipe, "do_classifier_free_guidance", True))
        embeds = torch.cat([neg, pos]) if guided else pos
        out = {"prompt_embeds": embeds.to(device=current.device, dtype=current.dtype)}
        if self.sdxl:
            pooled_now = tensors["add_text_embeds"]
            pooled = torch.cat([neg_pooled, pos_pooled]) if guided else pos_pooled
            out["add_text_embeds"] = pooled.to(device=pooled_now.device, dtype=pooled_now.dtype)
        return out


def step_conditioning(
    s: Any, positives: Sequence[str], negatives: Sequence[str], encode: Callable[[str], Any], *, sdxl: bool
) -> StepConditioning | None:
    """The per-step conditioning of one forward, or None when no prompt of it has a schedule."""
    if not any(has_schedule(t) for t in [*positives, *negatives]):
        return None
    passes = prompt_passes(s)

    def schedules(text: str) -> list[Schedule]:
        return [prompt_schedule(text, steps, hires_steps) for steps, hires_steps in passes]

    return StepConditioning(
        [schedules(t) for t in positives],
        [schedules(t) for t in negatives],
        encode,
        sdxl=sdxl,
        multiplier=steps_multiplier(s),
    )


def second_pass(kwargs: dict) -> dict:
    """``kwargs`` of the first pass made ready for the hires pass (unchanged without a schedule)."""
    first = kwargs.get("callback_on_step_end")
    if not isinstance(first, StepConditioning):
        return kwargs
    return {**kwargs, **first.for_pass(1).kwargs()}
