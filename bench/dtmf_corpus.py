"""In-band DTMF detection against a labelled corpus, durchwahl and spandsp side by side, per category.

    flock /tmp/durchwahl-bench.lock .venv/bin/python bench/dtmf_corpus.py [--seed 1] [--scale 1.0]
        [--no-spandsp] [--keep DIR]

Every item is built from a seeded generator (tests/media/dtmf_synth.py) or from espeak-ng speech, passed
through G.711 (μ-law and A-law alternately) as a call carries it, and written as 8 kHz 16-bit raw audio.
durchwahl reads it in 20 ms frames: items that carry the greeting's echo go through
``media.dtmf_greeting.GreetingDetector`` with the greeting we sent (decoded from the same law) as its
reference; all others through ``InbandDetector`` (what GreetingDetector does when nothing was sent). The
same files go to spandsp's ``dtmf_rx`` (default parameters; Debian ``libspandsp-dev``) through
``bench/spandsp_dtmf.c``, compiled here with ``cc``.

Scoring, the same for both: a report is a hit when its digit is the labelled tone's and it came between the
tone's start and 40 ms after its end (the moment each detector reports: ``detected_at`` for durchwahl, the
sample count when spandsp's real-time callback fired); each tone is matched once. Every other report is
false. **Errors** are misses plus false reports. Reject categories have no tones: everything reported there
is false.

The greeting's echo: a greeting (espeak-ng speech in eight languages and six voices, or synthetic music) at
−12 dBm0 RMS is sent to the caller; the caller's line returns it through a random echo path — a bulk delay
of 0–64 ms, then a decaying random impulse response of 2–8 ms, high-passed (not flat) — scaled to the echo
return loss (ERL) of the category, plus line noise at −55 dBm0. The caller dials three-digit extensions
(tones of 50–100 ms, pauses of 60–200 ms, each tone at −20 dBm0) from 1.5 s into the greeting on, a burst
every 2.5–4 s. ``--scale`` multiplies the corpus size.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "media")]

from dtmf_synth import (  # noqa: E402
    Float,
    Labelled,
    Press,
    ms,
    music_like,
    pink_noise,
    sequence,
    speech_like,
    through_g711,
    tone_rms,
    white_noise,
)

from durchwahl.media.dtmf_cli import read_wav  # noqa: E402
from durchwahl.media.dtmf_greeting import GreetingDetector  # noqa: E402
from durchwahl.media.dtmf_inband import FRAME, InbandDetector  # noqa: E402
from durchwahl.media.resample import resample  # noqa: E402

DIGITS = "0123456789*#ABCD"
KEYS = "0123456789*#"  # what callers dial
LAWS = ("ulaw", "alaw")
SPANDSP_SOURCE = ROOT / "bench" / "spandsp_dtmf.c"
SLACK = ms(40)  # a report may come this long after its tone ended

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


@attrs.frozen
class Item:
    """One file of the corpus: what the caller's line carried (after G.711), what we sent meanwhile (the
    greeting, as the far end decoded it; None: nothing), and the tones in it."""

    category: str
    received: np.ndarray
    reference: np.ndarray | None
    presses: tuple[Press, ...]


@attrs.define
class Tally:
    expected: int = 0
    hits: int = 0
    false: int = 0
    seconds: float = 0.0

    @property
    def misses(self) -> int:
        return self.expected - self.hits

    @property
    def errors(self) -> int:
        return self.misses + self.false


def score(presses: tuple[Press, ...], reports: list[tuple[str, int]]) -> tuple[int, int]:
    """(hits, false reports): a report hits a tone of its digit if it came between the tone's start and
    ``SLACK`` after its end; each tone is hit once."""
    unused = list(reports)
    hits = 0
    for press in presses:
        for report in unused:
            digit, at = report
            if digit == press.digit and press.start <= at <= press.start + press.length + SLACK:
                unused.remove(report)
                hits += 1
                break
    return hits, len(unused)


# ------------------------------------------------------------------------------------------ signals


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


def at_level(signal: Float, level_dbm0: float) -> Float:
    rms = float(np.sqrt(np.mean(signal**2)))
    return signal * (tone_rms(level_dbm0) / rms) if rms > 0 else signal


def speech_corpus(rng: np.random.Generator, scale: float) -> Iterator[tuple[str, Float]]:
    voices = subprocess.run(["espeak-ng", "--voices"], capture_output=True, text=True, check=False).stdout
    known = {line.split()[1].split("-")[0] for line in voices.splitlines()[1:] if len(line.split()) > 1}
    languages = [lang for lang in GREETINGS if lang in known]
    rounds = max(1, round(scale))
    for lang in languages:
        for _ in range(rounds):
            for variant in VARIANTS:
                pitch, speed = int(rng.integers(20, 80)), int(rng.integers(130, 190))
                audio = espeak(GREETINGS[lang], lang + variant, pitch, speed)
                if audio is not None:
                    yield lang, audio


def echo_path(rng: np.random.Generator) -> Float:
    """A line's echo path: a bulk delay of 0–64 ms, then 2–8 ms of decaying random response, high-passed."""
    delay = int(rng.integers(0, ms(64) + 1))
    length = int(rng.integers(ms(2), ms(8) + 1))
    dispersion = rng.normal(0.0, 1.0, length) * np.exp(-np.arange(length) / (length / 4))
    response = np.convolve(dispersion, [1.0, -0.95])
    return np.concatenate([np.zeros(delay), response])


def extensions(rng: np.random.Generator, samples: int, level_dbm0: float) -> Labelled:
    """Three-digit extensions dialled from 1.5 s on, a burst every 2.5–4 s, within ``samples``."""
    parts: list[tuple[str, float, float]] = []
    lead = 1500.0
    total = lead
    while True:
        burst = [
            (str(rng.choice(list(KEYS))), float(rng.uniform(50, 100)), float(rng.uniform(60, 200)))
            for _ in range(3)
        ]
        gap = float(rng.uniform(2500, 4000)) - sum(t + p for _, t, p in burst)
        if total + sum(t + p for _, t, p in burst) + 200 > samples / 8:
            break
        burst[-1] = (burst[-1][0], burst[-1][1], burst[-1][2] + gap)
        parts += burst
        total += sum(t + p for _, t, p in burst)
    return sequence(rng, parts, lead_ms=lead, low_dbm0=level_dbm0, high_dbm0=level_dbm0, tail_ms=0)


def greeting_call(
    rng: np.random.Generator, greeting: Float, loss_db: float, law: str, *, digits: bool
) -> tuple[np.ndarray, np.ndarray, tuple[Press, ...]]:
    """What a caller's line carries while ``greeting`` plays: its echo, the caller's tones, line noise."""
    sent = through_g711(at_level(greeting, -12.0), law).astype(np.float64)
    echo = np.convolve(sent, echo_path(rng))[: len(sent)]
    echo *= 10 ** (-loss_db / 20) * np.std(sent) / np.std(echo)
    line = echo + white_noise(rng, len(echo), tone_rms(-55.0))
    presses: tuple[Press, ...] = ()
    if digits:
        tones = extensions(rng, len(line), -20.0)
        line[: len(tones.signal)] += tones.signal[: len(line)]
        presses = tuple(p for p in tones.presses if p.start + p.length <= len(line))
    return through_g711(line, law), sent, presses


def build(rng: np.random.Generator, scale: float, with_speech: bool) -> Iterator[Item]:
    reps = max(1, round(4 * scale))
    count = 0

    def law() -> str:
        nonlocal count
        count += 1
        return LAWS[count % 2]

    def plain(category: str, labelled: Labelled) -> Item:
        return Item(category, through_g711(labelled.signal, law()), None, labelled.presses)

    def tones(**kwargs: object) -> Callable[[], Labelled]:
        tone_ms = float(kwargs.pop("tone_ms", 40))  # type: ignore[arg-type]
        pause_ms = float(kwargs.pop("pause_ms", 40))  # type: ignore[arg-type]
        return lambda: sequence(rng, [(d, tone_ms, pause_ms) for d in DIGITS], **kwargs)  # type: ignore[arg-type]

    for _ in range(reps):
        yield plain("limits: nominal 40 ms / 40 ms", tones()())
        for dev in ((-0.015, -0.015), (-0.015, 0.015), (0.015, -0.015), (0.015, 0.015)):
            yield plain(
                "limits: deviation ±1.5 %", sequence(rng, [(d, 40, 40) for d in DIGITS], deviation=dev)
            )
        yield plain("limits: -26 dBm0 per tone", tones(low_dbm0=-26, high_dbm0=-26)())
        yield plain("limits: twist +8 dB (low louder)", tones(low_dbm0=-10, high_dbm0=-18)())
        yield plain("limits: twist -4 dB (high louder)", tones(low_dbm0=-14, high_dbm0=-10)())
        for dev in ((-0.035, 0), (0.035, 0), (0, -0.035), (0, 0.035)):
            labelled = sequence(rng, [(d, 80, 60) for d in DIGITS], deviation=dev)
            yield plain("reject: deviation ±3.5 %", Labelled(labelled.signal, ()))
        yield plain("reject: tones of 22.5 ms", Labelled(tones(tone_ms=22.5, pause_ms=60)().signal, ()))
        yield plain("reject: -55 dBm0 per tone", Labelled(tones(low_dbm0=-55, high_dbm0=-55)().signal, ()))
        for snr in (12, 9, 6, 3):
            labelled = sequence(rng, [(d, 40, 40) for d in DIGITS] * 2, low_dbm0=-20, high_dbm0=-20)
            noise = white_noise(rng, len(labelled.signal), tone_rms(-20) / 10 ** (snr / 20))
            yield plain(
                f"noise: white, SNR {snr} dB per tone", Labelled(labelled.signal + noise, labelled.presses)
            )

    for _ in range(max(1, round(2 * scale))):
        for level in (-25, -15, -5):
            yield plain(
                "talk-off: speech-like (synthetic)", Labelled(speech_like(rng, 20, level_dbm0=level), ())
            )
            yield plain(
                "talk-off: music-like (synthetic)", Labelled(music_like(rng, 20, level_dbm0=level), ())
            )
        noise = np.concatenate([white_noise(rng, 8000 * 20, tone_rms(-10)), pink_noise(rng, 8000 * 20, 1.0)])
        yield plain("talk-off: white and pink noise", Labelled(at_level(noise, -10), ()))

    # Music greetings (synthetic: chords of harmonic instruments), 20 s each.
    for _ in range(max(1, round(6 * scale))):
        music = music_like(rng, 20.0)
        for loss in (6, 12, 20):
            received, sent, presses = greeting_call(rng, music, loss, law(), digits=True)
            yield Item(f"echo: music greeting, ERL {loss} dB", received, sent, presses)
        received, sent, _ = greeting_call(rng, music, 0.0, law(), digits=False)
        yield Item("talk-off: echo of music greetings, ERL 0 dB", received, sent, ())

    if not with_speech:
        return
    for lang, audio in speech_corpus(rng, scale):
        for level in (-20, -8):
            yield plain(f"talk-off: espeak-ng speech ({lang})", Labelled(at_level(audio, level), ()))
        greeting = np.concatenate([audio, np.zeros(ms(300)), audio])  # a greeting of 10-25 s
        for loss in (6, 12, 20):
            received, sent, presses = greeting_call(rng, greeting, loss, law(), digits=True)
            yield Item(f"echo: speech greeting, ERL {loss} dB", received, sent, presses)
        received, sent, _ = greeting_call(rng, greeting, 0.0, law(), digits=False)
        yield Item("talk-off: echo of speech greetings, ERL 0 dB", received, sent, ())
        # The caller's own background speech (no echo): speech at -20 dBm0 RMS, tones at -10 and -20.
        for tone_level in (-10, -20):
            tones_ = extensions(rng, len(audio), float(tone_level))
            mix = at_level(audio, -20).copy()
            mix[: len(tones_.signal)] += tones_.signal[: len(mix)]
            presses = tuple(p for p in tones_.presses if p.start + p.length <= len(mix))
            yield plain(f"caller's background speech + digits at {tone_level} dBm0", Labelled(mix, presses))


# ---------------------------------------------------------------------------------------- detectors


def durchwahl(item: Item) -> list[tuple[str, int]]:
    audio = np.concatenate(
        [item.received, np.zeros((-len(item.received)) % FRAME + 3 * FRAME, dtype=np.int16)]
    )
    if item.reference is None:
        detector = InbandDetector()
        found = [d for k in range(0, len(audio), FRAME) for d in detector.feed(audio[k : k + FRAME])]
    else:
        reference = np.zeros(len(audio))
        reference[: len(item.reference)] = item.reference
        greeting = GreetingDetector()
        found = [
            d
            for k in range(0, len(audio), FRAME)
            for d in greeting.feed(audio[k : k + FRAME], reference[k : k + FRAME])
        ]
    return [(d.digit, d.detected_at) for d in found]


def spandsp_binary(directory: Path) -> Path | None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    binary = directory / "spandsp_dtmf"
    result = subprocess.run(
        [compiler, "-O2", "-o", str(binary), str(SPANDSP_SOURCE), "-lspandsp"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        why = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "cc failed"
        print(f"spandsp scorer not built ({why})")
        return None
    return binary


def spandsp(binary: Path, files: list[Path]) -> tuple[dict[int, list[tuple[str, int]]], float]:
    """spandsp's reports per file index, and the CPU seconds it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    reports: dict[int, list[tuple[str, int]]] = {}
    for first in range(0, len(files), 500):  # keep the command line short
        batch = files[first : first + 500]
        output = subprocess.run(
            [str(binary), *map(str, batch)], capture_output=True, text=True, check=True
        ).stdout
        for line in output.splitlines():
            index, digit, at = line.split()
            reports.setdefault(first + int(index), []).append((digit, int(at)))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return reports, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--no-spandsp", action="store_true", help="durchwahl only")
    parser.add_argument("--keep", type=Path, default=None, help="write the corpus files here and keep them")
    args = parser.parse_args(argv)
    with_speech = shutil.which("espeak-ng") is not None
    began = time.perf_counter()
    ours: dict[str, Tally] = {}
    theirs: dict[str, Tally] = {}
    items: list[tuple[str, tuple[Press, ...], float]] = []
    files: list[Path] = []
    cpu = {"plain": [0.0, 0.0], "greeting": [0.0, 0.0]}  # CPU seconds, audio seconds
    with tempfile.TemporaryDirectory() as scratch:
        directory = args.keep or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        binary = None if args.no_spandsp else spandsp_binary(Path(scratch))
        for index, item in enumerate(build(np.random.default_rng(args.seed), args.scale, with_speech)):
            seconds = len(item.received) / 8000
            started = time.process_time()
            reports = durchwahl(item)
            kind = "plain" if item.reference is None else "greeting"
            cpu[kind][0] += time.process_time() - started
            cpu[kind][1] += seconds
            tally = ours.setdefault(item.category, Tally())
            hits, false = score(item.presses, reports)
            tally.expected += len(item.presses)
            tally.hits += hits
            tally.false += false
            tally.seconds += seconds
            path = directory / f"{index:05d}.raw"
            item.received.astype("<i2").tofile(path)
            files.append(path)
            items.append((item.category, item.presses, seconds))
        spandsp_cpu = 0.0
        if binary is not None:
            reports_by_file, spandsp_cpu = spandsp(binary, files)
            for index, (category, presses, seconds) in enumerate(items):
                tally = theirs.setdefault(category, Tally())
                hits, false = score(presses, reports_by_file.get(index, []))
                tally.expected += len(presses)
                tally.hits += hits
                tally.false += false
                tally.seconds += seconds
    report(ours, theirs, cpu, spandsp_cpu, args, with_speech, time.perf_counter() - began)
    return 0


def _columns(tally: Tally) -> str:
    return f"{tally.hits:5d} {tally.misses:5d} {tally.false:5d}"


def report(
    ours: dict[str, Tally],
    theirs: dict[str, Tally],
    cpu: dict[str, list[float]],
    spandsp_cpu: float,
    args: argparse.Namespace,
    with_speech: bool,
    elapsed: float,
) -> None:
    width = max(len(name) for name in ours)
    side = " hits  miss false"
    print(
        f"{'category':<{width}}  {'audio s':>8} {'tones':>6} | durchwahl{side} | spandsp{side} | errors d / s"
    )
    worse = []
    totals = [Tally(), Tally()]
    for name, mine in ours.items():
        other = theirs.get(name)
        line = f"{name:<{width}}  {mine.seconds:8.1f} {mine.expected:6d} | {'':9}{_columns(mine)}"
        if other is not None:
            mark = "" if mine.errors <= other.errors else "  WORSE"
            if mark:
                worse.append(name)
            line += f" | {'':7}{_columns(other)} | {mine.errors:5d} / {other.errors:<5d}{mark}"
        print(line)
        for total, tally in zip(totals, (mine, other), strict=True):
            if tally is not None:
                total.expected += tally.expected
                total.hits += tally.hits
                total.false += tally.false
                total.seconds += tally.seconds
    mine, other = totals
    line = f"{'total':<{width}}  {mine.seconds:8.1f} {mine.expected:6d} | {'':9}{_columns(mine)}"
    if theirs:
        line += f" | {'':7}{_columns(other)} | {mine.errors:5d} / {other.errors:<5d}"
    print(line)
    if theirs:
        verdict = "met" if not worse else "NOT met (" + "; ".join(worse) + ")"
        print(f"aim, no category worse than spandsp: {verdict}")
        half = "met" if mine.errors <= other.errors / 2 else "NOT met"
        print(
            f"aim, at most half of spandsp's errors in total: {half} ({mine.errors} against {other.errors})"
        )
    for kind, (spent, seconds) in cpu.items():
        if seconds:
            per_hour = spent / (seconds / 3600)
            print(f"durchwahl CPU, {kind} items, one stream at a time: {per_hour:.2f} s per channel-hour")
    if theirs and spandsp_cpu:
        per_hour = spandsp_cpu / (mine.seconds / 3600)
        print(f"spandsp CPU, every item, its process included: {per_hour:.2f} s per channel-hour")
    if not with_speech:
        print("espeak-ng not found: speech categories skipped (apt-get install espeak-ng)")
    print(f"seed {args.seed}, scale {args.scale}, {elapsed:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
