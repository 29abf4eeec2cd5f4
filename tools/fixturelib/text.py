"""A tiny SentencePiece tokenizer with Kyutai's special ids (0 unk, 1 <s>, 2 </s>, 3 <pad>).

Trained deterministically (one thread, fixed seed, no shuffling) on the small English + French
text below, so the ``.model`` file is bit-identical across runs.
"""

from __future__ import annotations

import io
from pathlib import Path

SPM_SEED = 1234

# Written for these fixtures; everyday English and French, numbers, punctuation, names.
CORPUS = """\
Hello, and welcome to this short recording about streaming speech models.
Today we talk about how a computer can listen to a voice and write down every word as it is spoken.
The model hears small pieces of audio, eighty milliseconds at a time, and it answers with text.
When the speaker pauses, the model waits; when a new word begins, it marks the boundary.
This is a test of the system. One, two, three, four, five, six, seven, eight, nine, ten.
My name is Alice and this is my friend Bob. We live in a small house near the river.
The weather was cold this morning, but the sun came out in the afternoon and it felt like spring.
She said that she would come back tomorrow, maybe around noon, if the train is on time.
Please read the following sentence slowly and clearly, then stop and take a breath.
What time is it? It is half past seven. Where are you going? I am going home.
People often ask whether machines really understand language, or whether they only predict it.
A good story needs a beginning, a middle and an end, and a reason for the listener to care.
Thank you very much for listening, and have a wonderful day. Goodbye!
Bonjour à tous, et bienvenue dans cette courte émission consacrée à la parole.
Aujourd'hui, nous parlons d'un modèle qui écoute une voix et écrit chaque mot en temps réel.
Il fait beau ce matin à Paris; les enfants jouent dans le jardin et le café est encore chaud.
Je voudrais une baguette, deux croissants et un verre d'eau, s'il vous plaît.
Elle a dit qu'elle reviendrait demain, peut-être vers midi, si le train arrive à l'heure.
Nous avons marché longtemps le long de la rivière avant de rentrer à la maison.
Merci beaucoup de votre attention, et à bientôt pour une nouvelle histoire.
Le chat dort sur le canapé pendant que la pluie tombe doucement sur les fenêtres.
Numbers like 2024, 12.5 and 24000 appear in technical talks, as do words like audio and codec.
"""


def train_tokenizer(path: Path | str, vocab_size: int) -> Path:
    """Train the unigram SentencePiece model on ``CORPUS`` and write it to ``path``.

    Ids 0..3 are ``<unk>``, ``<s>``, ``</s>``, ``<pad>`` as in Kyutai's tokenizers.
    """
    import sentencepiece as spm

    spm.set_random_generator_seed(SPM_SEED)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines()),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        minloglevel=2,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return path
