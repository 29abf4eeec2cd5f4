"""``dsm serve``: live STT and TTS streams through one batched engine per model, over Kyutai's streaming
WebSocket protocol (``/api/asr-streaming``, ``/api/tts_streaming``) and OpenAI's audio HTTP API
(``/v1/audio/transcriptions``, ``/v1/audio/speech``, ``/v1/models``), plus ``/health``.

Layout: ``config`` (options), ``state`` (loaded engines), ``bridge`` (step thread -> event loop),
``auth`` / ``logs`` (middleware), ``kyutai`` / ``kyutai_codec`` / ``streams`` (WebSocket routes, MessagePack
messages, one client against one session),
``openai_api`` / ``openai_codec`` (HTTP routes and response bodies), ``app`` (the Starlette app), ``run``
(uvicorn with a bounded graceful shutdown). Needs the ``serve`` extra: ``pip install 'dsmcli[serve]'``.
"""
