"""From a request to prompt tokens and generation parameters.

Chat messages go through the model's chat template (special tokens parsed, as the template
writes them); plain completion prompts are tokenized as text, so a user cannot smuggle
control tokens into a completion.
"""

from __future__ import annotations

from collections.abc import Sequence

from llm_worker.engine import GenerationParams, Model
from shared.openai_protocol import ChatMessage
from shared.sampling import SamplingParams


def chat_tokens(model: Model, messages: Sequence[ChatMessage]) -> list[int]:
    prompt = model.apply_chat_template([(m.role, m.text) for m in messages])
    return model.tokenize(prompt, add_special=True, parse_special=True)


def completion_tokens(model: Model, prompt: str) -> list[int]:
    return model.tokenize(prompt, add_special=True, parse_special=False)


def generation_params(
    sampling: SamplingParams, tokens: Sequence[int], max_tokens: int
) -> GenerationParams:
    return GenerationParams(
        prompt_tokens=tokens,
        max_tokens=max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        seed=sampling.seed,
        stop=tuple(sampling.stop_list),
        presence_penalty=sampling.presence_penalty,
        frequency_penalty=sampling.frequency_penalty,
    )
