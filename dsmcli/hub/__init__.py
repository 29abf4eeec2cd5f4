"""Everything that reads models from disk or the Hub, and the only package that does:

* :mod:`~dsmcli.hub.registry` — weights.toml (short names, roles, defaults);
* :mod:`~dsmcli.hub.files` — model sources (Hub repo, local dir) and their files through the HF cache;
* :mod:`~dsmcli.hub.checkpoint` — config.json split as the reference does; :mod:`~dsmcli.hub.task_config` — its
  typed task configs (stt_config, tts_config, lm_gen_config);
* :mod:`~dsmcli.hub.weights` — safetensors → state dicts;
* :mod:`~dsmcli.hub.loaders` — checkpoint → LM, Mimi, tokenizer (the engine and codec never touch files).

Nothing is imported here, so ``import dsmcli.hub.registry`` stays cheap (no torch).
"""
