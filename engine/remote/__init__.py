"""Remote replicas: the engine is one or more OpenAI-compatible vLLM servers.

Tails stay token-exact because nothing is re-tokenized on the way: the model's own tokenizer
is loaded here (same checkpoint as the replicas, checked against their ``/tokenize`` at start),
prompts go to ``/v1/completions`` as token ids, and ``return_token_ids`` brings the generated
ids back with every streamed chunk.

Routing and failure handling, per request (one request = one trace), by module:

* :mod:`.startup`: which checkpoint to load (``--model``, else the replicas'), and the checks
  that a replica serves it (tokenizer against ``/tokenize``, ``max_model_len`` from
  ``/v1/models``) before it receives any request.
* :mod:`.replicas`: **balancing**, least outstanding requests among healthy replicas (ties:
  fewest sent); a replica is ejected after ``upstream_eject_after`` consecutive failures
  (probes or requests; a refused connection ejects at once).
* :mod:`.health`: a background task probes ``/health`` every ``upstream_health_interval_s``;
  the first good probe re-admits an ejected replica. A replica that was unreachable at start
  has its tokenizer checked before it is admitted.
* :mod:`.retry` (tenacity): connect errors, timeouts, 5xx, dropped streams are retried with
  full-jitter exponential backoff, on another replica when one is available; a 429 marks the
  replica busy for its ``Retry-After`` and the retry goes elsewhere, or waits that long when
  no other replica can take it. 4xx answers are the request's fault (:mod:`.errors`): no
  retry, ``EngineError`` with status 400.
* :mod:`.stream`: one attempt, and **mid-stream failover by continuation**: a stream that
  breaks after some tokens is continued on another replica from the tokens already delivered,
  so the consumer sees one consistent stream and usage counts exactly the tokens delivered.
* Only when no replica can serve (every replica ejected, or ``upstream_attempts`` failed
  attempts in a row without a new token) does the request fail, with
  :class:`UpstreamUnavailable` (an ``EngineError`` with status 503).
* :mod:`.engine`: :class:`RemoteEngine`. ``abort`` cancels the request's task (at most once,
  :mod:`.trace`), which closes the upstream HTTP response in a shielded task; vLLM aborts a
  request whose client went away.
"""

from mrsa.engine.remote.engine import RemoteEngine
from mrsa.engine.remote.errors import UpstreamMismatch, UpstreamRejected, UpstreamUnavailable

__all__ = ["RemoteEngine", "UpstreamMismatch", "UpstreamRejected", "UpstreamUnavailable"]
