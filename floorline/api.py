"""The offline Python API: `LLM(model=...).generate(prompts, SamplingParams)`, `.chat(...)`, `.stream(...)`."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Iterator, Sequence

from tqdm import tqdm

from floorline.engine.engine import EngineArgs, LLMEngine
from floorline.engine.output_processor import CompletionOutput, RequestOutput
from floorline.errors import InvalidRequestError
from floorline.sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput"]

Prompt = str | list[int]


class LLM:
    """An engine for offline use: batches of prompts in, finished outputs back in the same order."""

    def __init__(self, model: str | None = None, **kwargs: Any):
        fields = {f.name for f in dataclasses.fields(EngineArgs)}
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise TypeError(f"unknown LLM argument(s) {', '.join(unknown)}; accepted: {', '.join(sorted(fields))}")
        self._attach(LLMEngine(EngineArgs(model=model, **kwargs)))

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> "LLM":
        llm = cls.__new__(cls)
        llm._attach(LLMEngine(args))
        return llm

    def _attach(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self._chat_encoder = None  # SafeChatEncoder, built on the first chat

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool | None = None,
    ) -> list[RequestOutput]:
        """Runs every prompt to completion; a refused prompt gets an output with `error` set, others run."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # one prompt, as text or token ids
        params = sampling_params or SamplingParams()
        params_list = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise InvalidRequestError(f"{len(params_list)} sampling params for {len(prompts)} prompts")
        results: dict[str, RequestOutput] = {}
        order: list[str] = []
        final_only: dict[int, SamplingParams] = {}  # one copy per distinct params object, not per prompt
        for prompt, p in zip(prompts, params_list):
            try:
                # Only finished outputs are kept: the engine need not snapshot every request each step.
                if id(p) not in final_only:
                    final_only[id(p)] = dataclasses.replace(p, output_kind="final_only")
                order.append(self.engine.add_request(prompt, final_only[id(p)]))
            except InvalidRequestError as e:
                rid = f"refused-{len(order)}"
                order.append(rid)
                results[rid] = RequestOutput(rid, prompt if isinstance(prompt, str) else None,
                                             [] if isinstance(prompt, str) else list(prompt), [], True, error=str(e))
        show = sys.stderr.isatty() if use_tqdm is None else use_tqdm
        bar = tqdm(total=len(order) - len(results), desc="generating", unit="req", disable=not show, leave=False)
        while self.engine.has_unfinished_requests():
            for out in self.engine.step():
                if out.finished:
                    results[out.request_id] = out
                    bar.update(1)
        bar.close()
        return [results[rid] for rid in order]

    def chat(
        self,
        messages: list[dict[str, str]] | list[list[dict[str, str]]],
        sampling_params: SamplingParams | None = None,
        use_tqdm: bool | None = None,
        **template_kwargs: Any,
    ) -> list[RequestOutput]:
        """Applies the model's chat template to one conversation or a list of them, then generates."""
        conversations = messages if messages and isinstance(messages[0], list) else [messages]
        prompts = [self.encode_chat(conv, **template_kwargs) for conv in conversations]
        return self.generate(prompts, sampling_params, use_tqdm)

    def stream(self, prompt: Prompt, sampling_params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Yields a RequestOutput whenever new text is ready (use `.outputs[0].delta_text`)."""
        rid = self.engine.add_request(prompt, sampling_params)
        try:
            while True:
                for out in self.engine.step():
                    if out.request_id == rid:
                        yield out
                        if out.finished:
                            return
        finally:
            self.engine.abort_request(rid)  # a consumer that stops early frees the request

    def encode_chat(self, conversation: list[dict[str, str]], **template_kwargs: Any) -> list[int]:
        """Prompt ids of a conversation rendered with the model's chat template. Message text stays
        text: a message holding `<|im_end|>` does not close a turn (as in the server)."""
        if self.tokenizer is None:
            raise InvalidRequestError("this model has no tokenizer, so it has no chat template")
        if self._chat_encoder is None:
            from floorline.tokenizer.safe_chat import SafeChatEncoder

            self._chat_encoder = SafeChatEncoder(self.tokenizer)
        return self._chat_encoder.encode(conversation, **template_kwargs)
