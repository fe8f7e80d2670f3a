"""The serving engine: continuous batching over a paged KV store with pluggable KV formats.

``Engine`` ties a ``Scheduler`` (waiting/running queues, chunked prefill, preemption), a
``KVManager`` (a byte budget of pages), ``KVFormat`` encoders (fp16 pages built in, LeanKV by
name) and a ``ModelRunner`` (one packed forward per step). Importing this package loads torch.
"""

from leanstack.llm.engine.engine import Engine, EngineConfig, RequestOutput
from leanstack.llm.engine.kv_format import KVFormat, ModelShape, make_kv_format, register_kv_format
from leanstack.llm.engine.kv_manager import KVManager
from leanstack.llm.engine.sampling import SamplingParams
from leanstack.llm.engine.scheduler import Scheduler
from leanstack.llm.engine.sequence import Sequence, SequenceStatus

__all__ = [
    "Engine",
    "EngineConfig",
    "KVFormat",
    "KVManager",
    "ModelShape",
    "RequestOutput",
    "SamplingParams",
    "Scheduler",
    "Sequence",
    "SequenceStatus",
    "make_kv_format",
    "register_kv_format",
]
