"""A stand-in for the parts of vLLM 0.24 that bin/engines/vllm_engine.py uses, for tests on
machines without a GPU. Module paths, class names and signatures follow the real 0.24.0 source
(vllm/__init__.py, entrypoints/llm.py, v1/engine/llm_engine.py, sampling_params.py, outputs.py,
inputs/engine.py); the model behind them is fake (see _fake.py) and records every call it gets
to the JSON-lines file named by $FAKE_VLLM_LOG, so tests can assert on what the adapter sent."""

from vllm.entrypoints.llm import LLM
from vllm.inputs import TextPrompt, TokensPrompt
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams

__version__ = "0.24.0"

__all__ = ["LLM", "SamplingParams", "RequestOutputKind", "TokensPrompt", "TextPrompt", "RequestOutput",
           "CompletionOutput", "__version__"]
