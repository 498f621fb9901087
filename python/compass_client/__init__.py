"""compass_client: run LLM prompt batches on a compass pool of GPU workers.

    from compass_client import Client

    with Client("tcp://127.0.0.1:5555") as client:
        results = client.submit([{"custom_id": "q1", "prompt": "Hello"}], pool="default")
"""

from ._batches import BatchHandle, per_request_results
from .client import Client
from .protocol import BatchMeta, FailureCode, RejectCode
from .types import BatchOutcome, CompassError, Logprobs, Request, RequestError, Result, Score, TopLogprob

__all__ = [
    "BatchHandle",
    "BatchMeta",
    "BatchOutcome",
    "Client",
    "CompassError",
    "FailureCode",
    "Logprobs",
    "RejectCode",
    "Request",
    "RequestError",
    "Result",
    "Score",
    "TopLogprob",
    "per_request_results",
]
__version__ = "0.1.0"
