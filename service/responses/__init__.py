"""OpenAI's Responses API (``/v1/responses``) over our runs: a request is an RSA run (a plain
generation is a run of one trace), answered live or, with ``background``, as a durable run
that survives restarts and can be polled, cancelled and replayed.

- :mod:`.wire`: the request and the response object;
- :mod:`.events`: the event stream (sequence numbers, output items, RSA progress);
- :mod:`.prepare`: a request as a checked run (conversation, effort, limits);
- :mod:`.live`: answered while the client waits;
- :mod:`.stored`: stored and background responses, their objects and replayed events.
"""
