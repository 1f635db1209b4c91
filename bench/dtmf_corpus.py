"""In-band DTMF detector against a labelled corpus: detection rate, misses and false digits per category.

    .venv/bin/python bench/dtmf_corpus.py [--seed 1] [--scale 1.0]

Every category is built from a seeded generator (tests/media/dtmf_synth.py) or from espeak-ng speech, passed
through a G.711 round trip (μ-law and A-law alternately) and fed to ``InbandDetector`` in 20 ms frames, as
a call does. A detection is a hit when its digit matches a labelled tone and its start lies within 20 ms of
the tone's; every other detection is a false digit. Speech categories need ``espeak-ng`` (Debian package
``espeak-ng``); without it they are skipped with a note. ``--scale`` multiplies the corpus size.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "media")]

from dtmf_synth import (  # noqa: E402
    Float,
    Labelled,
    detect,
    music_like,
    pink_noise,
    score,
    sequence,
    speech_like,
    through_g711,
    tone_rms,
    white_noise,
)

from media.dtmf_cli import read_wav  # noqa: E402
from media.resample import resample  # noqa: E402

DIGITS = "0123456789*#ABCD"
LAWS = ("ulaw", "alaw")

GREETINGS = {
    "de": "Guten Tag und herzlich willkommen bei der Musterfirma. Wenn Sie die Durchwahl Ihres "
    "Gesprächspartners kennen, wählen Sie sie bitte jetzt. Für den Vertrieb wählen Sie die Eins, für den "
    "Kundendienst die Zwei. Alle Leitungen sind besetzt, bitte haben Sie einen Moment Geduld. "
    "Sechsundsiebzig, achthundertneunzig, zwölf.",
    "en": "Good morning and welcome to the example company. If you know the extension of the person you "
    "are calling, please dial it now. For sales press one, for support press two. All lines are busy, "
    "please hold the line. Seventy six, eight hundred ninety, twelve.",
    "fr": "Bonjour et bienvenue chez la société exemple. Si vous connaissez le numéro de poste de votre "
    "correspondant, composez-le maintenant. Pour le service commercial, tapez un. Veuillez patienter.",
    "es": "Buenos días y bienvenido a la empresa de ejemplo. Si conoce la extensión, márquela ahora. "
    "Para ventas pulse uno, para soporte pulse dos. Todas las líneas están ocupadas, espere por favor.",
    "it": "Buongiorno e benvenuti alla società esempio. Se conoscete l'interno, componetelo ora. Per le "
    "vendite premete uno, per l'assistenza premete due. Tutte le linee sono occupate, attendete prego.",
    "nl": "Goedendag en welkom bij het voorbeeldbedrijf. Als u het toestelnummer kent, kies het nu. Voor "
    "verkoop kiest u een, voor service twee. Alle lijnen zijn bezet, een ogenblik geduld alstublieft.",
    "pl": "Dzień dobry, witamy w przykładowej firmie. Jeśli znasz numer wewnętrzny, wybierz go teraz. "
    "Wszystkie linie są zajęte, prosimy o cierpliwość.",
    "ru": "Добрый день, добро пожаловать в нашу компанию. Если вы знаете добавочный номер, наберите его "
    "сейчас. Все линии заняты, пожалуйста, оставайтесь на линии.",
}
VARIANTS = ("", "+m3", "+f2", "+f4", "+m7", "+croak")


class Tally:
    def __init__(self) -> None:
        self.expected = self.hits = self.false = self.items = 0
        self.seconds = 0.0

    def add(self, labelled: Labelled, law: str) -> None:
        result = score(labelled.presses, detect(through_g711(labelled.signal, law)))
        self.expected += result.expected
        self.hits += result.hits
        self.false += result.false
        self.items += 1
        self.seconds += len(labelled.signal) / 8000


def espeak(text: str, voice: str, pitch: int, speed: int) -> Float | None:
    """espeak-ng's speech for ``text`` at 8 kHz (float, 16-bit scale), or ``None`` if it failed."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "speech.wav"
        command = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(path), text]
        result = subprocess.run(command, capture_output=True, timeout=60, check=False)
        if result.returncode != 0 or not path.exists():
            return None
        samples, rate = read_wav(str(path))
    return resample(samples, rate, 8000)


def _at_level(signal: Float, level_dbm0: float) -> Float:
    rms = float(np.sqrt(np.mean(signal**2)))
    return signal * (tone_rms(level_dbm0) / rms) if rms > 0 else signal


def speech_corpus(rng: np.random.Generator, scale: float) -> Iterator[tuple[str, Float]]:
    voices = subprocess.run(["espeak-ng", "--voices"], capture_output=True, text=True, check=False).stdout
    known = {line.split()[1].split("-")[0] for line in voices.splitlines()[1:] if len(line.split()) > 1}
    languages = [lang for lang in GREETINGS if lang in known]
    rounds = max(1, round(2 * scale))
    for lang in languages:
        for _ in range(rounds):
            for variant in VARIANTS:
                pitch, speed = int(rng.integers(20, 80)), int(rng.integers(130, 190))
                audio = espeak(GREETINGS[lang], lang + variant, pitch, speed)
                if audio is not None:
                    yield lang, audio


def _random_digits(rng: np.random.Generator, count: int) -> list[str]:
    return [str(d) for d in rng.choice(list(DIGITS), size=count)]


def build(rng: np.random.Generator, scale: float, with_speech: bool) -> dict[str, Tally]:
    tallies: dict[str, Tally] = {}
    reps = max(1, round(4 * scale))

    def add(category: str, labelled: Labelled, k: int) -> None:
        tallies.setdefault(category, Tally()).add(labelled, LAWS[k % 2])

    def tones(**kwargs: object) -> Callable[[], Labelled]:
        tone_ms = float(kwargs.pop("tone_ms", 40))  # type: ignore[arg-type]
        pause_ms = float(kwargs.pop("pause_ms", 40))  # type: ignore[arg-type]
        return lambda: sequence(rng, [(d, tone_ms, pause_ms) for d in DIGITS], **kwargs)  # type: ignore[arg-type]

    limits = {
        "limits: nominal 40 ms / 40 ms": tones(),
        "limits: deviation ±1.5 %": None,
        "limits: -26 dBm0 per tone": tones(low_dbm0=-26, high_dbm0=-26),
        "limits: twist +8 dB (low louder)": tones(low_dbm0=-10, high_dbm0=-18),
        "limits: twist -4 dB (high louder)": tones(low_dbm0=-14, high_dbm0=-10),
        "limits: twist +8 dB at -26 dBm0": tones(low_dbm0=-18, high_dbm0=-26),
        "reject: deviation ±3.5 %": None,
        "reject: tones of 22.5 ms": tones(tone_ms=22.5, pause_ms=60),
        "reject: -55 dBm0 per tone": tones(low_dbm0=-55, high_dbm0=-55),
    }
    for k in range(reps):
        for name, make in limits.items():
            if name == "limits: deviation ±1.5 %":
                for dev in ((-0.015, -0.015), (-0.015, 0.015), (0.015, -0.015), (0.015, 0.015)):
                    add(name, sequence(rng, [(d, 40, 40) for d in DIGITS], deviation=dev), k)
            elif name == "reject: deviation ±3.5 %":
                for dev in ((-0.035, 0), (0.035, 0), (0, -0.035), (0, 0.035)):
                    labelled = sequence(rng, [(d, 80, 60) for d in DIGITS], deviation=dev)
                    add(name, Labelled(labelled.signal, ()), k)
            elif name.startswith("reject"):
                assert make is not None
                add(name, Labelled(make().signal, ()), k)
            else:
                assert make is not None
                add(name, make(), k)
        for snr in (20, 15, 12, 9):
            labelled = sequence(rng, [(d, 40, 40) for d in DIGITS], low_dbm0=-20, high_dbm0=-20)
            noise = white_noise(rng, len(labelled.signal), tone_rms(-20) / 10 ** (snr / 20))
            add(
                f"noise: white, SNR {snr} dB per tone", Labelled(labelled.signal + noise, labelled.presses), k
            )
        for twist in (10, 12, -6, -8):
            low, high = (-10.0, -10.0 - twist) if twist > 0 else (-10.0 + twist, -10.0)
            labelled = sequence(rng, [(d, 40, 40) for d in DIGITS], low_dbm0=low, high_dbm0=high)
            add(f"twist beyond the limit: {twist:+d} dB", labelled, k)

    minutes = max(1, round(2 * scale))
    for k in range(minutes):
        for level in (-25, -15, -5):
            add("talk-off: speech-like (synthetic)", Labelled(speech_like(rng, 20, level_dbm0=level), ()), k)
            add("talk-off: music-like (synthetic)", Labelled(music_like(rng, 20, level_dbm0=level), ()), k)
        noise = np.concatenate([white_noise(rng, 8000 * 20, tone_rms(-10)), pink_noise(rng, 8000 * 20, 1.0)])
        add("talk-off: white and pink noise", Labelled(_at_level(noise, -10), ()), k)

    if with_speech:
        for k, (lang, audio) in enumerate(speech_corpus(rng, scale)):
            for level in (-20, -8):
                add(f"talk-off: espeak-ng speech ({lang})", Labelled(_at_level(audio, level), ()), k)
            # Digits dialled while the greeting plays: speech at -20 dBm0 RMS, tones of 60 ms at -10 and
            # -20 dBm0 per tone.
            for tone_level in (-10, -20):
                digits = _random_digits(rng, max(1, len(audio) // 8000))
                labelled = sequence(
                    rng, [(d, 60, 500) for d in digits], low_dbm0=tone_level, high_dbm0=tone_level
                )
                length = max(len(labelled.signal), len(audio))
                mix = np.zeros(length)
                mix[: len(audio)] += _at_level(audio, -20)
                mix[: len(labelled.signal)] += labelled.signal
                add(f"greeting + digits at {tone_level} dBm0 (espeak-ng)", Labelled(mix, labelled.presses), k)
    return tallies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    with_speech = shutil.which("espeak-ng") is not None
    began = time.perf_counter()
    tallies = build(np.random.default_rng(args.seed), args.scale, with_speech)
    width = max(len(name) for name in tallies)
    columns = f"{'audio s':>8} {'tones':>6} {'hits':>6} {'rate':>7} {'misses':>6} {'false':>6}"
    print(f"{'category':<{width}}  {columns}")
    for name, tally in tallies.items():
        rate = f"{100 * tally.hits / tally.expected:6.2f}%" if tally.expected else "      -"
        print(
            f"{name:<{width}}  {tally.seconds:8.1f} {tally.expected:6d} {tally.hits:6d} {rate:>7} "
            f"{tally.expected - tally.hits:6d} {tally.false:6d}"
        )
    if not with_speech:
        print("espeak-ng not found: speech categories skipped (apt-get install espeak-ng)")
    print(f"seed {args.seed}, scale {args.scale}, {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
