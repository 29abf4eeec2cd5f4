"""The TTS text side: token ids (tokens), scripts → entries (script, dialog), the text-stream state machine
(state_machine) and voices (voices). No model code: the engine runs the network, these decide what it reads."""
